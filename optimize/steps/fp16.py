"""FP16 weights and activations; inputs and outputs stay float32 so callers see no change."""

from __future__ import annotations

from pathlib import Path


def run(src: Path, dst: Path, ctx) -> dict:
    import warnings

    import onnx
    from onnxconverter_common import float16

    with warnings.catch_warnings():  # it warns once per tiny weight clamped to fp16's range
        warnings.simplefilter("ignore")
        model = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
    return {"step": "fp16", "tool": "onnxconverter-common float16", "keep_io_types": True}
