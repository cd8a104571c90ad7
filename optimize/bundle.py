"""Write a bundle folder: model file, labels, manifest with sha256 of every file it names."""

from __future__ import annotations

import shutil
from pathlib import Path

from device_profiles import Target
from edge_sdk import __version__ as sdk_version
from edge_sdk.decoders.code import BUNDLE_FILE, FILE_KEY, is_code_decoder, source_of
from edge_sdk.hashing import sha256_file
from edge_sdk.manifest import FileEntry, InputSpec, Manifest, OutputSpec, RuntimeSpec, TaskSpec
from optimize.errors import ToolchainError


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
) -> Manifest:
    """Create (or replace) the bundle folder and return its manifest."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
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
