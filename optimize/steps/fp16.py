"""FP16 weights and activations; inputs and outputs stay float32 so callers see no change.

onnxruntime's own float16 converter, not onnxconverter-common's: the latter types the cast it
adds after a Resize as float where float16 is expected, and onnxruntime refuses to load the
result (YOLO11n, PP-OCRv4: every model with an upsampling neck).
"""

from __future__ import annotations

from pathlib import Path


def run(src: Path, dst: Path, ctx) -> dict:
    import warnings

    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():  # it warns once per tiny weight clamped to fp16's range
        warnings.simplefilter("ignore")
        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
    return {"step": "fp16", "tool": "onnxruntime.transformers float16", "keep_io_types": True}
