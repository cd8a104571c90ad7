"""Write a bundle folder: model file, labels, manifest with sha256 of every file it names.

Never delete what edge-opt did not write: OUT/TARGET is replaced only when it is empty or an
edge-opt bundle (manifest.json with `created_by` "edge-opt ...") holding nothing else (results,
clips a user kept beside the model would go with it), OUT/report.md/.json only when edge-opt
wrote them, unless --overwrite; a symbolic link there is always refused. A bundle is
built in a hidden sibling folder (.TARGET.partial-*) and renamed into place when complete; the
bundle it replaces is renamed aside first and deleted only after that.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from device_profiles import Target
from edge_sdk import __version__ as sdk_version
from edge_sdk.decoders.code import BUNDLE_FILE, FILE_KEY, is_code_decoder, source_of
from edge_sdk.hashing import sha256_file
from edge_sdk.manifest import (
    MANIFEST_NAME,
    FileEntry,
    InputSpec,
    Manifest,
    OutputSpec,
    RuntimeSpec,
    TaskSpec,
)
from edge_sdk.trust import SIGNATURE_NAME
from optimize.errors import ToolchainError

MAX_MANIFEST_BYTES = 16 << 20  # larger is not a manifest edge-opt wrote


def runtime_spec(target: Target, backend: str, options: dict) -> RuntimeSpec:
    """The profile's runtime settings for the format's backend (TensorRT options where it may
    run: onnxruntime uses them when its TensorRT provider exists on the device)."""
    profile = target.profile
    if backend != "onnxruntime":
        return RuntimeSpec(backend=backend, threads=profile.threads, options=options)
    provider_options = dict(profile.provider_options)
    options = dict(options)
    if "TensorrtExecutionProvider" in profile.execution_providers:
        options["tensorrt"] = tensorrt_hints(target)
        provider_options["TensorrtExecutionProvider"] = {
            "trt_fp16_enable": target.precision in ("fp16", "int8"),
            "trt_int8_enable": target.precision == "int8",
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": "trt_cache",
        }
    return RuntimeSpec(backend=backend, threads=profile.threads,
                       providers=profile.execution_providers, provider_options=provider_options,
                       options=options)


def tensorrt_hints(target: Target) -> dict:
    """How to build a TensorRT engine from this bundle without onnxruntime."""
    flags = {"fp32": "", "fp16": " --fp16", "int8": " --int8 --fp16", "int4": " --fp16"}
    return {
        "trtexec": f"trtexec --onnx=model.onnx{flags[target.precision]} "
                   "--saveEngine=model.engine --timingCacheFile=trt_timing.cache",
        "note": "edge_sdk uses onnxruntime's TensorRT provider with the provider_options above "
                "when it exists (engines cached in trt_cache/); int8 bundles carry explicit "
                "Q/DQ, so TensorRT needs no calibration cache"
                + ("; MatMulNBits (int4) runs in onnxruntime's CUDA provider, not TensorRT"
                   if target.precision == "int4" else ""),
    }


def write_bundle(
    folder: Path,
    target: Target,
    files: dict[str, Path],
    runtime: RuntimeSpec,
    inputs: tuple[InputSpec, ...],
    outputs: tuple[OutputSpec, ...],
    task: TaskSpec,
    labels: list[str] | None,
    quantization: dict | None,
    source: dict,
    calibration_stats: dict | None,
    overwrite: bool = False,
) -> Manifest:
    """Create (or replace) the bundle folder and return its manifest.

    The bundle is built in a hidden sibling folder and renamed into place once complete, so an
    interrupted run leaves the old bundle (or nothing) instead of half of each. Only an earlier
    edge-opt bundle is replaced, unless `overwrite` (check_replaceable).
    """
    check_replaceable(folder, overwrite)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        manifest = _write_files(staging, target, files, runtime, inputs, outputs, task, labels,
                                quantization, source, calibration_stats)
        _move_into_place(staging, folder, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _write_files(
    folder: Path,
    target: Target,
    files: dict[str, Path],
    runtime: RuntimeSpec,
    inputs: tuple[InputSpec, ...],
    outputs: tuple[OutputSpec, ...],
    task: TaskSpec,
    labels: list[str] | None,
    quantization: dict | None,
    source: dict,
    calibration_stats: dict | None,
) -> Manifest:
    """Fill the empty `folder` with the bundle's files and manifest."""
    entries = {}
    for key, path in files.items():
        name = f"model{path.suffix}"  # model.onnx, model.xml + model.bin, model.tflite
        shutil.copyfile(path, folder / name)
        entries[key] = FileEntry(name, sha256_file(folder / name))
    files = entries
    code = code_decoder_source(task.decoder)
    if code is not None:  # a user decoder: the device runs this file (edge_sdk/decoders/code.py)
        shutil.copyfile(code, folder / BUNDLE_FILE)
        files[FILE_KEY] = FileEntry(BUNDLE_FILE, sha256_file(folder / BUNDLE_FILE))
    if labels:
        (folder / "labels.txt").write_text("\n".join(labels) + "\n")
        files["labels"] = FileEntry("labels.txt", sha256_file(folder / "labels.txt"))
    manifest = Manifest(
        target=target.name,
        profile=target.profile.name,
        precision=target.precision,
        format=target.format,
        runtime=runtime,
        files=files,
        inputs=inputs,
        outputs=outputs,
        task=task,
        labels=tuple(labels or ()),
        quantization=quantization,
        source=source,
        calibration_stats=calibration_stats,
        created_by=f"edge-opt {sdk_version}",
    )
    manifest.write(folder)
    return manifest


def edge_opt_manifest(folder: Path) -> dict | None:
    """The manifest of a bundle edge-opt wrote in `folder` (`created_by` says so), else None."""
    manifest = folder / MANIFEST_NAME
    try:
        if manifest.is_symlink() or manifest.stat().st_size > MAX_MANIFEST_BYTES:
            return None
        data = json.loads(manifest.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    created_by = data.get("created_by") if isinstance(data, dict) else None
    return data if isinstance(created_by, str) and created_by.startswith("edge-opt") else None


def is_edge_opt_bundle(folder: Path) -> bool:
    """Whether `folder` holds a bundle edge-opt wrote (its manifest says so)."""
    return edge_opt_manifest(folder) is not None


# What edge-opt itself puts in a bundle folder beside the manifest's files: the bundle's report
# (report.py), the signature `edge-opt sign` writes and its temporary file (signing.py).
OWN_FILES = frozenset({MANIFEST_NAME, "report.md", "report.json", SIGNATURE_NAME,
                       f".{SIGNATURE_NAME}.tmp"})


def foreign_entries(folder: Path, manifest: dict) -> list[str]:
    """What is in `folder` that edge-opt did not write, relative to it (a folder ends in "/"):
    the files and folders a re-export would delete along with the old bundle.

    Ours: the manifest's files, OWN_FILES, and the folder an older edge_sdk kept TensorRT
    engines in when the manifest named it (trt_engine_cache_path "trt_cache", a path in the
    bundle); everything else, however it got there, is someone's data."""
    own = set(OWN_FILES)
    files = manifest.get("files")
    for entry in files.values() if isinstance(files, dict) else ():
        path = entry.get("path") if isinstance(entry, dict) else None
        if isinstance(path, str) and path and ".." not in Path(path).parts:
            own.add(Path(path).as_posix())
    cache_dirs = set()
    runtime = manifest.get("runtime")
    options = runtime.get("provider_options") if isinstance(runtime, dict) else None
    for opts in options.values() if isinstance(options, dict) else ():
        cache = opts.get("trt_engine_cache_path") if isinstance(opts, dict) else None
        if isinstance(cache, str) and cache and not Path(cache).is_absolute() \
                and ".." not in Path(cache).parts:
            cache_dirs.add(Path(cache).as_posix())
    parents = {p.as_posix() for name in own for p in Path(name).parents if p != Path(".")}
    foreign = []
    for root, dirs, names in os.walk(folder):  # links are listed, never followed
        rel = Path(root).relative_to(folder)
        for name in sorted(dirs):
            path = (rel / name).as_posix()
            if os.path.islink(os.path.join(root, name)):
                foreign.append(path)  # edge-opt writes no links
            elif path in parents or path in cache_dirs or _inside(path, cache_dirs):
                continue
            else:
                foreign.append(path + "/")
            dirs.remove(name)  # a foreign folder is named once, not file by file
        foreign += [path for path in ((rel / name).as_posix() for name in sorted(names))
                    if path not in own and not _inside(path, cache_dirs)]
    return foreign


def _inside(path: str, folders: set[str]) -> bool:
    return any(path.startswith(f + "/") for f in folders)


def check_replaceable(folder: Path, overwrite: bool) -> None:
    """Refuse to write a bundle over anything edge-opt did not write (or through a link): the
    folder must be empty or an edge-opt bundle with nothing else in it, since replacing it
    deletes all of it."""
    if folder.is_symlink():
        raise ToolchainError(f"{folder} is a symbolic link; edge-opt writes a bundle only into "
                             "a real folder, never through a link: remove the link or choose "
                             "another --out")
    if not folder.exists() or overwrite:
        return
    if not folder.is_dir():
        raise ToolchainError(f"{folder} is a file; edge-opt replaces only its own bundles: move "
                             "it away, choose another --out, or pass --overwrite to replace it")
    if not any(folder.iterdir()):
        return
    manifest = edge_opt_manifest(folder)
    if manifest is None:
        raise ToolchainError(f"{folder} holds files that are not an edge-opt bundle; edge-opt "
                             "replaces only its own bundles: move it away, choose another "
                             "--out, or pass --overwrite to replace it")
    foreign = foreign_entries(folder, manifest)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3
                                          else "")
        raise ToolchainError(f"{folder} is an edge-opt bundle but also holds {shown}, which "
                             "replacing it would delete; move them out of the bundle folder, "
                             "choose another --out, or pass --overwrite to delete them")


def check_report(path: Path, title: str, overwrite: bool, writer: str = "edge-opt") -> None:
    """Refuse to replace a report file `writer` did not write (`title`: how it starts)."""
    if path.is_symlink():
        raise ToolchainError(f"{path} is a symbolic link; edge-opt does not write through "
                             "links: remove it or choose another --out")
    if not path.exists() or overwrite:
        return
    try:
        with path.open("rb") as f:
            ours = f.read(len(title.encode())) == title.encode()
    except OSError:
        ours = False
    if not ours:
        raise ToolchainError(f"{path} was not written by {writer}; move it away, choose another "
                             "--out, or pass --overwrite to replace it")


def check_out_folder(out: Path) -> None:
    """Fail now, not after the conversion work, when `out` cannot hold the results: it is a
    file, or the folder (or the one it would be created in) is not writable."""
    existing = out
    while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "" if existing == out else f" ({existing} is a file)"
        raise ToolchainError(f"--out {out} is not a folder{where}; give a folder path")
    try:
        probe = existing / f".edge-opt-probe-{uuid.uuid4().hex[:8]}"
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        raise ToolchainError(f"--out {out}: cannot write in {existing} ({exc.strerror}); choose "
                             "a folder you can write to") from None


REPORT_TITLES = {"report.md": "# edge-opt export report", "report.json": '{\n  "generated"'}


def check_destination(out: Path, bundles: list[str], overwrite: bool) -> None:
    """Everything an export will write under `out`, checked before any work: the folder can be
    written, and nothing the run replaces (OUT/TARGET, OUT/report.*) was written by another
    tool or person (or is a link), unless `overwrite`."""
    check_out_folder(out)
    for name in bundles:
        check_replaceable(out / name, overwrite)
    for name, title in REPORT_TITLES.items():
        check_report(out / name, title, overwrite)


def _move_into_place(staging: Path, folder: Path, overwrite: bool) -> None:
    """Rename the finished `staging` folder to `folder`; an old bundle there is renamed aside
    first and deleted only once the new one is in place."""
    check_replaceable(folder, overwrite)  # again: the run took a while
    old = None
    if folder.exists():
        old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(folder, old)
    try:
        os.rename(staging, folder)
    except OSError:
        if old is not None:
            os.rename(old, folder)
        raise
    if old is not None:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()


def code_decoder_source(decoder: str) -> Path | None:
    """The user's decoder file a bundle must carry, or None for a built-in decoder."""
    if not is_code_decoder(decoder):
        return None
    source = source_of(decoder)
    if source is None or not source.is_file():
        raise ToolchainError(f"decoder {decoder} was not registered from a file in this run; "
                             "pass it as --decoder file.py:Name")
    return source


def update_metrics(folder: Path, manifest: Manifest, metrics: dict) -> Manifest:
    """Record measured metrics in the manifest (hashes are unaffected: they cover model files)."""
    from dataclasses import replace

    manifest = replace(manifest, metrics=metrics)
    manifest.write(folder)
    return manifest
