"""Run one bundle on a folder of images with the installed edge_sdk; write the results as JSON.

Called by device_check.py with a device venv's Python (and the toolchain's, for reference).
It imports nothing but edge_sdk, and refuses to run on a source checkout: the point is to
test what a device installs.

    python device_probe.py BUNDLE IMAGES OUT.json [--allow-source]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


def main(argv: list[str]) -> int:
    bundle, images, out = (Path(a) for a in argv[:3])
    import edge_sdk

    where = Path(edge_sdk.__file__).resolve()
    if "--allow-source" not in argv and "site-packages" not in where.parts:
        print(f"edge_sdk was imported from {where}, not from an installed package",
              file=sys.stderr)
        return 2
    start = time.perf_counter()
    model = edge_sdk.load(bundle)
    load_s = time.perf_counter() - start
    results = {}
    for path in sorted(p for p in images.iterdir() if p.suffix.lower() in SUFFIXES):
        results[path.name] = model.predict(path).to_dict()
    out.write_text(json.dumps({"backend": model.backend.name, "edge_sdk": str(where),
                               "load_s": round(load_s, 3), "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
