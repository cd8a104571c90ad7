"""Every backend checks, at load time, that the manifest describes the model's inputs and
outputs: names, and each input's static dimensions and element type.

A manifest that names an output the model does not have would otherwise load and fail on the
first frame (onnxruntime) or silently read another output by position (OpenVINO); a wrong
input shape would make preprocessing build (and allocate) tensors the model refuses.
"""

from __future__ import annotations

import re
from pathlib import Path

from edge_sdk.errors import ModelMismatchError
from edge_sdk.manifest import Manifest

REEXPORT = "the manifest does not describe this model: re-export the bundle"


def check_model_io(manifest: Manifest, inputs: dict[str, tuple[list[int | None], str | None]],
                   outputs: list[str], model_path: Path) -> None:
    """`inputs`: name -> (dims, None where dynamic; numpy dtype name or None if unknown)."""
    for spec in manifest.inputs:
        if spec.name not in inputs:
            raise ModelMismatchError(f"{model_path.name} has no input named {spec.name!r} (it "
                                     f"has {', '.join(sorted(inputs))}); {REEXPORT}")
        dims, dtype = inputs[spec.name]
        fits = len(dims) == len(spec.shape) and all(
            d is None or d == s for d, s in zip(dims, spec.shape))
        if not fits:
            raise ModelMismatchError(f"{model_path.name}: input {spec.name!r} is "
                                     f"{['?' if d is None else d for d in dims]} but the "
                                     f"manifest says {list(spec.shape)}; {REEXPORT}")
        if dtype is not None and dtype != spec.dtype:
            raise ModelMismatchError(f"{model_path.name}: input {spec.name!r} is {dtype} but "
                                     f"the manifest says {spec.dtype}; {REEXPORT}")
    for spec in manifest.outputs:
        if spec.name not in outputs:
            raise ModelMismatchError(f"{model_path.name} has no output named {spec.name!r} (it "
                                     f"has {', '.join(sorted(outputs))}); {REEXPORT}")


def signature_name(name: str) -> str:
    """The name a TFLite bundle's signature gives the source model's tensor `name`: litert-torch
    takes signature names as Python keywords, so edge-opt writes each non-word character as "_"
    (and puts "t_" before a leading digit). The manifest keeps the source's name, the one every
    other format has; the LiteRT backend finds the tensor by this one."""
    clean = re.sub(r"\W", "_", name)
    return clean if clean and not clean[0].isdigit() else f"t_{clean}"
