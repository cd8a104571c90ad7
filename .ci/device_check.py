"""Device-install check: the wheel, installed the way a device installs it, gives the results
the toolchain's own run gives.

    python .ci/device_check.py            # x86-64 (each extra), Python 3.10, aarch64
    python .ci/device_check.py --only x86-64

Steps: build the wheel (`pip wheel --no-deps .`); export a real model (EfficientNet-Lite0) to
one bundle per format with the toolchain (cached under the cache folder, keyed by the sources);
run each bundle with the toolchain's edge_sdk for reference; then, per extra (`device`,
`device-openvino`, `device-litert`), in a fresh virtualenv: install the wheel non-editable,
fail if torch, onnx, nncf or tensorflow came in, load each bundle of that extra's format,
predict the held-out photos and run `edge-run` on the shipped clip, and compare with the
reference: the same top-1 class everywhere (boxes within a pixel for a detector) and scores
within a tolerance (exact on the same host and runtime, looser across CPU architectures).
The same is done with a Python 3.10 interpreter (JetPack 6's) when the machine has one, and
in a Debian bookworm arm64 root filesystem under qemu-user-static (.ci/arm64_rootfs.sh)
where this machine can run foreign binaries. Missing interpreters or emulation are skipped
with a line saying so; a wrong result fails the check.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / ".ci"
DATA = ROOT / "examples" / "data"
IMAGES = DATA / "eval"
CLIP = DATA / "vtest_short.avi"
CLIP_FRAMES = 30
CACHE = Path(os.environ.get("EDGE_DEVICE_CHECK_CACHE", "/var/cache/edge-ai-toolkit"))
SKIPPED = 77  # exit code of .ci/arm64_rootfs.sh when this machine cannot run arm64 binaries

FORBIDDEN = ("torch", "onnx", "nncf", "tensorflow", "tensorflow-cpu", "tf-keras")
# extra -> the bundle formats its runtime runs
EXTRAS = {"device": "onnx", "device-openvino": "openvino", "device-litert": "tflite"}
# target -> format: one bundle per format, and both TFLite precisions a Raspberry Pi runs
TARGETS = {"jetson-int8": "onnx", "x86-int8": "openvino", "rpi5-int8": "tflite",
           "rpi5-fp16": "tflite"}
# A real detector too (boxes compared within a pixel), when `make` has fetched it.
DETECTOR = ROOT / "examples" / "models" / "yolo11n_person.onnx"
DETECTOR_BUNDLE = "yolo11n-jetson-int8"
# What runs on aarch64 (Raspberry Pi: LiteRT; Jetson: onnxruntime; no OpenVINO there).
ARM_EXTRAS = ("device-litert", "device")
# The CPU qemu emulates: a Raspberry Pi 5's Cortex-A76 (a Jetson Orin's A78AE is the same class).
# Under qemu's default "max" CPU (SVE2, SME, ...) LiteRT's int8 XNNPACK kernels returned the same
# garbage for every image; on the cores devices have, the results equal x86's.
ARM_CPU = "cortex-a76"
ARM_PHOTOS, ARM_CLIP_FRAMES = 20, 10  # under emulation a 640x640 detector takes seconds a frame
# Arm kernels round differently from x86's: scores within ARM_TOL, and the two best classes
# may swap only where the reference has them within ARM_TIE of each other (a near-tie).
ARM_TOL, ARM_TIE = 0.05, 0.02
# Detectors: an int8 graph's boxes move a little with the kernels' rounding, and a score near
# the deployed threshold (0.25) can fall either side of it. Confident boxes must match.
ARM_BOX_PX, ARM_DET_TOL, CONFIDENT = 3.0, 0.1, 0.5
EFFNET = f"{ROOT / 'examples' / 'efficientnet_lite0.py'}:build"
EXPORT_FLAGS = ["--input-shape", "1x3x224x224", "--resize", "center-crop", "--mean", "127",
                "--std", "128", "--labels", str(DATA / "imagenet_labels.txt"),
                "--calib", str(DATA / "calib"), "--eval", str(IMAGES), "--runs", "5",
                "--max-drop", "100"]


class CheckFailed(Exception):
    """A result differs from the reference, or the install brought what a device must not."""


@dataclass
class Row:
    where: str  # "x86-64 py3.11", "aarch64 py3.11", ...
    extra: str
    install_mb: float | None
    bundle: str
    backend: str
    images: int
    top1_equal: str
    max_score_diff: float
    clip_frames: str
    verdict: str


def log(msg: str) -> None:
    print(f"[device-check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise CheckFailed(f"{' '.join(map(str, cmd[:4]))} ... exited {proc.returncode}:\n{tail}")
    return proc


def source_key() -> str:
    """Hash of everything that shapes the bundles: the toolchain, runtime, profiles, data."""
    files = run(["git", "-C", ROOT, "ls-files", "optimize", "edge_sdk", "device_profiles",
                 "examples/efficientnet_lite0.py", "examples/data", "pyproject.toml"]).stdout
    h = hashlib.sha256()
    for name in sorted(files.split()):
        h.update(name.encode())
        h.update((ROOT / name).read_bytes())
    if DETECTOR.is_file():  # fetched, not tracked
        h.update(DETECTOR.read_bytes())
    return h.hexdigest()[:16]


def build_wheel(work: Path) -> Path:
    """The wheel, built from a copy of what it is made of: setuptools reuses the tree's
    build/lib, so a module deleted from the tree stayed in every wheel built there later."""
    log("building the wheel (pip wheel --no-deps .)")
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for package in ("edge_sdk", "optimize", "device_profiles", "sync"):
        shutil.copytree(ROOT / package, source / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", work, source])
    (wheel,) = work.glob("edge_ai_toolkit-*.whl")
    log(f"wheel: {wheel.name} ({wheel.stat().st_size / 1024:.0f} KB)")
    return wheel


def make_bundles() -> Path:
    """One bundle per format from the toolchain, cached by source hash."""
    folder = CACHE / "device-check-bundles" / source_key()
    if (folder / "done").is_file():
        log(f"bundles: cached in {folder}")
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    targets = [a for t in TARGETS for a in ("--target", t)]
    log(f"exporting EfficientNet-Lite0 to {', '.join(TARGETS)} (a few minutes, once per "
        "source change)")
    start = time.time()
    run([sys.executable, "-m", "optimize.cli", "export", EFFNET, *EXPORT_FLAGS, *targets,
         "--format", "default", "--out", folder, "--quiet"], cwd=ROOT)
    if DETECTOR.is_file():
        log(f"exporting {DETECTOR.name} to jetson-int8")
        run([sys.executable, "-m", "optimize.cli", "export", DETECTOR, "-t", "jetson-int8",
             "--calib", DATA / "calib", "--eval", IMAGES, "--runs", "5", "--max-drop", "1000",
             "--out", folder / "detector", "--quiet"], cwd=ROOT)
        (folder / "detector" / "jetson-int8").rename(folder / DETECTOR_BUNDLE)
    (folder / "done").write_text("")
    log(f"bundles exported in {time.time() - start:.0f} s")
    return folder


def probe(python: Path, bundle: Path, out: Path, cwd: Path, allow_source: bool = False) -> dict:
    """The bundle's results on the held-out photos, run by `python`'s installed edge_sdk."""
    extra = ["--allow-source"] if allow_source else []
    run([python, CI / "device_probe.py", bundle, IMAGES, out, *extra], cwd=cwd,
        env=clean_env())
    return json.loads(out.read_text())


def edge_run(exe: Path, bundle: Path, out: Path, cwd: Path) -> list[dict]:
    # --tracker none: a tracker confirms tracks over frames; the model's detections are compared
    run([exe, bundle, "--source", CLIP, "--jsonl", out, "--max-frames", CLIP_FRAMES,
         "--tracker", "none", "--quiet"],
        cwd=cwd, env=clean_env())
    return [json.loads(line) for line in out.read_text().splitlines() if '"frame"' in line]


def clean_env() -> dict:
    """No PYTHONPATH or venv of the caller: the tool under test imports only what it installed."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = os.defpath
    return env


def compare(ref: list[dict], got: list[dict], tol: float, tie: float = 0.0
            ) -> tuple[int, float, int]:
    """(results compared, largest top-1 score difference, near-tie swaps); raises on a
    different class or box. Across CPU architectures the kernels round differently, so where
    the reference's two best classes are within `tie` of each other a swap of the two is
    counted, not failed (the same host must agree exactly: tie 0)."""
    if len(ref) != len(got):
        raise CheckFailed(f"{len(got)} results, the reference has {len(ref)}")
    worst, swaps = 0.0, 0
    for i, (a, b) in enumerate(zip(ref, got)):
        if "xyxy" in a:
            swaps += detections_differ(i, a, b, tie)
            continue
        if a["class_ids"][:1] != b["class_ids"][:1]:
            near = (len(a["scores"]) > 1 and a["scores"][0] - a["scores"][1] <= tie
                    and b["class_ids"][:1] == a["class_ids"][1:2])
            if not near:
                raise CheckFailed(f"result {i}: top-1 {b['class_ids'][:1]}, reference "
                                  f"{a['class_ids'][:2]} with scores {a['scores'][:2]}")
            swaps += 1
            continue
        diffs = [abs(p - q) for p, q in zip(a["scores"][:1], b["scores"][:1])]
        worst = max([worst, *diffs])
    if worst > tol:
        raise CheckFailed(f"top-1 scores differ by up to {worst:.2g} (tolerance {tol:g})")
    return len(ref), worst, swaps


def compare_photos(ref: dict[str, dict], got: dict[str, dict], tol: float, tie: float = 0.0
                   ) -> tuple[int, float, int]:
    """compare() over the photos `got` has (aarch64 runs a subset: emulation is slow)."""
    if not got or not set(got) <= set(ref):
        raise CheckFailed(f"results for {sorted(set(got) - set(ref))[:3]}, unknown to the "
                          "reference, or none at all")
    names = sorted(got)
    return compare([ref[n] for n in names], [got[n] for n in names], tol, tie)


def detections_differ(i: int, a: dict, b: dict, tie: float) -> int:
    """Raise unless detections `b` match the reference `a`: on the same host box for box within
    a pixel (tie 0); across architectures (tie > 0) confident boxes (score >= CONFIDENT in
    either) must pair up within ARM_BOX_PX and ARM_DET_TOL, while boxes near the threshold may
    differ, appear or vanish: counted and returned."""
    if not tie:
        if len(a["xyxy"]) != len(b["xyxy"]) or _far(a["xyxy"], b["xyxy"], 1.0):
            raise CheckFailed(f"result {i}: boxes differ by more than a pixel")
        return 0
    near = 0
    taken: set[int] = set()
    for box, score in zip(a["xyxy"], a["scores"]):
        j = min((k for k in range(len(b["xyxy"])) if k not in taken),
                key=lambda k: max(abs(p - q) for p, q in zip(box, b["xyxy"][k])), default=None)
        confident = score >= CONFIDENT or (j is not None and b["scores"][j] >= CONFIDENT)
        if j is not None and not _far([box], [b["xyxy"][j]], ARM_BOX_PX) \
                and abs(score - b["scores"][j]) <= ARM_DET_TOL:
            taken.add(j)
        elif confident:
            raise CheckFailed(f"result {i}: a detection scored {score:.2f} on x86-64 has no "
                              f"match within {ARM_BOX_PX} px and {ARM_DET_TOL} here")
        else:
            near += 1
    extra = [k for k in range(len(b["xyxy"])) if k not in taken]
    if any(b["scores"][k] >= CONFIDENT for k in extra):
        raise CheckFailed(f"result {i}: a confident detection x86-64 does not have")
    return near + len(extra)


def _far(a: list, b: list, pixels: float) -> bool:
    return any(abs(p - q) > pixels for ra, rb in zip(a, b) for p, q in zip(ra, rb))


@dataclass
class Reference:
    photos: dict[str, dict[str, dict]]  # bundle -> image name -> result
    clip: dict[str, list[dict]]


def bundle_formats(bundles: Path) -> dict[str, str]:
    """Bundle folder -> format, for every bundle made (the detector only once fetched)."""
    found = dict(TARGETS)
    if (bundles / DETECTOR_BUNDLE).is_dir():
        found[DETECTOR_BUNDLE] = "onnx"
    return found


def reference(bundles: Path, work: Path) -> Reference:
    """The toolchain's own run of every bundle (editable install, the code that exported it)."""
    log("reference run with the toolchain's edge_sdk")
    photos, clip = {}, {}
    tool_bin = Path(sys.executable).parent
    for target in bundle_formats(bundles):
        res = probe(Path(sys.executable), bundles / target, work / f"ref-{target}.json", work,
                    allow_source=True)
        photos[target] = res["results"]
        clip[target] = edge_run(tool_bin / "edge-run", bundles / target,
                                work / f"ref-{target}.jsonl", work)
    return Reference(photos, clip)


def venv_size_mb(venv: Path) -> float:
    total = sum(p.stat().st_size for p in venv.rglob("*") if p.is_file() and not p.is_symlink())
    return total / 2**20


def install(python: str, venv: Path, wheel: Path, extra: str) -> float:
    """A fresh venv with the wheel[extra]; returns its size in MB. Fails on forbidden packages."""
    shutil.rmtree(venv, ignore_errors=True)
    run([python, "-m", "venv", venv])
    pip = [venv / "bin" / "python", "-m", "pip", "--disable-pip-version-check"]
    run([*pip, "install", "--quiet", f"{wheel}[{extra}]"], env=clean_env())
    names = {line.split("==")[0].lower() for line in
             run([*pip, "freeze", "--all"]).stdout.splitlines()}
    brought = sorted(names & set(FORBIDDEN))
    if brought:
        raise CheckFailed(f"[{extra}] brought {', '.join(brought)}, which a device must not need")
    return venv_size_mb(venv)


def check_venv(where: str, python: str, extra: str, wheel: Path, bundles: Path,
               ref: Reference, work: Path, tol: float) -> list[Row]:
    venv = work / f"venv-{where.replace(' ', '-')}-{extra}"
    log(f"{where}: installing the wheel with [{extra}] in a fresh venv")
    size = install(python, venv, wheel, extra)
    log(f"{where}: [{extra}] installed, {size:.0f} MB; torch/onnx/nncf/tensorflow absent")
    rows = []
    for target, fmt in bundle_formats(bundles).items():
        if fmt != EXTRAS[extra]:
            continue
        rows.append(check_bundle(where, extra, size, venv / "bin", bundles / target, ref,
                                 target, work, tol))
    return rows


def check_bundle(where: str, extra: str, size: float | None, bin_dir: Path, bundle: Path,
                 ref: Reference, target: str, work: Path, tol: float) -> Row:
    tag = f"{where.replace(' ', '-')}-{extra}-{target}"
    res = probe(bin_dir / "python", bundle, work / f"{tag}.json", work)
    n, worst, _ = compare_photos(ref.photos[target], res["results"], tol)
    frames = edge_run(bin_dir / "edge-run", bundle, work / f"{tag}.jsonl", work)
    f, fworst, _ = compare(ref.clip[target], frames, tol)
    row = Row(where, extra, size, target, res["backend"], n, f"{n}/{n}", max(worst, fworst),
              f"{f}/{len(ref.clip[target])}", "ok")
    log(f"{where}: {target} on {res['backend']}: top-1 equal on {n} photos and {f} clip "
        f"frames, max score diff {row.max_score_diff:.2g}")
    return row


def find_python310() -> str | None:
    """A CPython 3.10 that runs (pyenv's shims exist for versions that are not selected)."""
    pyenv = Path.home().glob(".pyenv/versions/3.10*/bin/python3.10")
    for candidate in (*sorted(map(str, pyenv)), shutil.which("python3.10")):
        if candidate and subprocess.run([candidate, "-c", "import venv"],
                                        capture_output=True).returncode == 0:
            return candidate
    return None


def check_arm64(wheel: Path, bundles: Path, ref: Reference, work: Path) -> list[Row]:
    """The wheel in Debian bookworm arm64 (Raspberry Pi OS's base) under qemu-user-static."""
    rootfs = CACHE / "bookworm-arm64"
    log("aarch64: preparing the Debian bookworm arm64 root filesystem (cached after the first "
        "run)")
    proc = subprocess.run(["bash", CI / "arm64_rootfs.sh", rootfs])
    if proc.returncode == SKIPPED:
        log("aarch64: SKIPPED: this machine cannot run arm64 binaries (see the line above)")
        return []
    if proc.returncode != 0:
        raise CheckFailed(f"arm64_rootfs.sh failed with exit code {proc.returncode}")
    share = work / "arm64"
    shutil.rmtree(share, ignore_errors=True)
    (share / "bundles").mkdir(parents=True)
    shutil.copy(wheel, share)
    shutil.copy(CI / "device_probe.py", share)
    (share / "images").mkdir()
    for photo in sorted(p for p in IMAGES.iterdir() if p.is_file())[:ARM_PHOTOS]:
        shutil.copy(photo, share / "images")
    shutil.copy(CLIP, share / "clip.avi")
    formats = bundle_formats(bundles)
    for target in formats:
        shutil.copytree(bundles / target, share / "bundles" / target)
    rows = []
    for extra in ARM_EXTRAS:
        fmt = EXTRAS[extra]
        targets = [t for t, f in formats.items() if f == fmt]
        log(f"aarch64: installing the wheel with [{extra}] and running {', '.join(targets)} "
            "(emulated: slow)")
        script = arm64_script(wheel.name, extra, targets)
        proc = subprocess.run(["bash", CI / "arm64_run.sh", rootfs, share, "sh", "-c", script],
                              capture_output=True, text=True,
                              env={**os.environ, "QEMU_CPU": ARM_CPU})
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
            raise CheckFailed(f"aarch64 [{extra}] failed:\n{tail}")
        size = float(proc.stdout.strip().splitlines()[-1].split()[0]) / 1024
        for target in targets:
            res = json.loads((share / f"arm64-{target}.json").read_text())
            n, worst, swaps = compare_photos(ref.photos[target], res["results"], tol=ARM_TOL,
                                             tie=ARM_TIE)
            lines = (share / f"arm64-{target}.jsonl").read_text().splitlines()
            frames = [json.loads(x) for x in lines if '"frame"' in x]
            f, fworst, fswaps = compare(ref.clip[target][:len(frames)], frames, tol=ARM_TOL,
                                        tie=ARM_TIE)
            ties = (f" ({swaps + fswaps} near-tie or near-threshold difference(s))"
                    if swaps + fswaps else "")
            rows.append(Row("aarch64 py3.11", extra, size, target, res["backend"], n,
                            f"{n - swaps}/{n}{ties}", max(worst, fworst),
                            f"{f - fswaps}/{len(frames)}", "ok"))
            log(f"aarch64: {target} on {res['backend']}: top-1 equal to x86-64 on "
                f"{n - swaps}/{n} photos and {f - fswaps}/{f} clip frames{ties}, max score "
                f"diff {max(worst, fworst):.2g}")
    return rows


def arm64_script(wheel: str, extra: str, targets: list[str]) -> str:
    """Shell run inside the arm64 root: fresh venv, install, probe, edge-run, print venv size."""
    venv = f"/work/venv-{extra}"
    req = f"'/work/{wheel}[{extra}]'"
    lines = [
        # bookworm's own pip drives the venv (ensurepip under emulation takes ~50 s); wheels
        # come from arm64_run.sh's wheelhouse, filled from PyPI only when something is missing
        "set -e", "cd /work", f"rm -rf {venv}", f"python3 -m venv --without-pip {venv}",
        f'pip() {{ python3 -m pip --disable-pip-version-check --python {venv}/bin/python "$@"; }}',
        f"pip install -q --no-index --no-compile {req} 2>/dev/null || {{ pip download -q "
        f"--only-binary=:all: -d /root/.cache/pip/wheelhouse {req} && pip install -q "
        f"--no-index --no-compile {req}; }}",
        f"if pip freeze --all | grep -iE '^({'|'.join(FORBIDDEN)})=='; then "
        "echo 'forbidden packages installed' >&2; exit 3; fi",
    ]
    for t in targets:
        lines += [
            f"{venv}/bin/python /work/device_probe.py /work/bundles/{t} /work/images "
            f"/work/arm64-{t}.json",
            f"{venv}/bin/edge-run /work/bundles/{t} --source /work/clip.avi --jsonl "
            f"/work/arm64-{t}.jsonl --max-frames {ARM_CLIP_FRAMES} --tracker none --quiet",
        ]
    lines.append(f"du -sk {venv} | cut -f1")
    return "\n".join(lines)


def table(rows: list[Row]) -> str:
    head = ("where", "extra", "install MB", "bundle", "backend", "photos top-1 equal",
            "clip frames equal", "max score diff", "verdict")
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        size = "-" if r.install_mb is None else f"{r.install_mb:.0f}"
        out.append(f"| {r.where} | {r.extra} | {size} | {r.bundle} | {r.backend} | "
                   f"{r.top1_equal} | {r.clip_frames} | {r.max_score_diff:.2g} | {r.verdict} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=("x86-64", "py3.10", "aarch64"), action="append",
                   help="run only these parts (default: all)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    args = p.parse_args(argv)
    parts = set(args.only or ("x86-64", "py3.10", "aarch64"))
    work = Path(tempfile.mkdtemp(prefix="device-check-"))
    rows: list[Row] = []
    start = time.time()
    try:
        wheel = build_wheel(work)
        bundles = make_bundles()
        ref = reference(bundles, work)
        host = f"x86-64 py{sys.version_info.major}.{sys.version_info.minor}"
        if "x86-64" in parts:
            for extra in EXTRAS:
                rows += check_venv(host, sys.executable, extra, wheel, bundles, ref, work,
                                   tol=1e-5)
        if "py3.10" in parts:
            py310 = find_python310()
            if py310 is None:
                log("py3.10: SKIPPED: no python3.10 on PATH or under ~/.pyenv/versions")
            else:
                for extra in EXTRAS:
                    rows += check_venv("x86-64 py3.10", py310, extra, wheel, bundles, ref,
                                       work, tol=1e-3)
        if "aarch64" in parts:
            rows += check_arm64(wheel, bundles, ref, work)
    except CheckFailed as exc:
        print(table(rows))
        print(f"device-check: FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(table(rows))
    log(f"passed ({len(rows)} bundle runs) in {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
