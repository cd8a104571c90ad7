"""Peak memory of a process running one bundle, and the launcher that gives each bundle one.

Each bundle is measured in a fresh `python -m optimize.bench.worker` so its peak RSS is its
own: one process that loaded five models in turn would report the largest plus whatever the
allocators kept. The peak is the kernel's high-water mark of the worker's resident set
(VmHWM); `ru_maxrss` is not used on Linux because it survives exec(), so a child started from
a big parent (this toolchain with torch loaded) would report the parent's size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from optimize.bench.errors import BenchError

WORKER = "optimize.bench.worker"


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])  # "VmHWM:   123456 kB"
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_bytes() -> int:
    """Largest resident set this process has had (VmHWM; ru_maxrss where /proc is missing)."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS: bytes, else KiB


def current_rss_bytes() -> int | None:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def run_worker(job: dict, workdir: Path, label: str) -> tuple[dict, dict[str, np.ndarray]]:
    """Run one measurement job in a fresh interpreter; returns its stats and arrays.

    The worker shows its own progress bar on stderr (inherited) and writes its result to
    files in `workdir`; a failure comes back as one line naming the bundle.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    job_path = workdir / f"{label}.job.json"
    job = {**job, "result": str(workdir / f"{label}.result.json"),
           "arrays": str(workdir / f"{label}.arrays.npz")}
    job_path.write_text(json.dumps(job))
    root = str(Path(__file__).resolve().parents[2])  # so the worker imports this checkout
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    # -P (Python 3.11+, as the toolchain's pins need): the working directory is not put first
    # on sys.path, so a folder there named like a package (a checkout of another version, a
    # user's own `optimize/`) cannot replace the code edge-opt itself runs; an installed
    # `edge-opt` never imports from the working directory either.
    safe_path = ["-P"] if sys.version_info >= (3, 11) else []
    proc = subprocess.run([sys.executable, *safe_path, "-m", WORKER, str(job_path)], env=env,
                          stdin=subprocess.DEVNULL, check=False)
    result_path = Path(job["result"])
    if not result_path.is_file():
        raise BenchError(f"{label}: the measuring process died (exit code {proc.returncode}) "
                         "before writing a result; see the messages above")
    result = json.loads(result_path.read_text())
    if "error" in result:
        raise BenchError(f"{label}: {result['error']}")
    with np.load(job["arrays"]) as arrays:
        return result, {k: arrays[k] for k in arrays.files}
