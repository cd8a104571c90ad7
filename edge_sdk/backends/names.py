"""Every backend checks that the manifest's tensor names are the model's, at load time.

A manifest that names an output the model does not have would otherwise load and fail on the
first frame (onnxruntime) or silently read another output by position (OpenVINO).
"""

from __future__ import annotations

from pathlib import Path

from edge_sdk.errors import ModelMismatchError
from edge_sdk.manifest import Manifest


def check_names(manifest: Manifest, model_inputs: list[str], model_outputs: list[str],
                model_path: Path) -> None:
    """Refuse a manifest whose input or output names are not the model's."""
    for role, specs, names in (("input", manifest.inputs, model_inputs),
                               ("output", manifest.outputs, model_outputs)):
        for spec in specs:
            if spec.name not in names:
                raise ModelMismatchError(
                    f"{model_path.name} has no {role} named {spec.name!r} (it has "
                    f"{', '.join(sorted(names))}); the manifest does not describe this model: "
                    "re-export the bundle"
                )
