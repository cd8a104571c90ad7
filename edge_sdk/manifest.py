"""The bundle manifest: everything a device needs to run a model, validated on load.

The JSON schema (`manifest.schema.json`) checks structure; the dataclasses here are what the
rest of the runtime trusts. Unknown schema versions are refused rather than guessed at.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import jsonschema

from edge_sdk.errors import ManifestError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    layout: str = "NCHW"
    color: str = "RGB"
    resize: str = "stretch"
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (255.0, 255.0, 255.0)
    crop_fraction: float = 0.875
    pad_value: int = 114
    quant: tuple[float, int] | None = None  # (scale, zero_point) for integer model inputs

    @property
    def hw(self) -> tuple[int, int]:
        if self.layout == "NCHW":
            return self.shape[2], self.shape[3]
        return self.shape[1], self.shape[2]

    @property
    def channels(self) -> int:
        return self.shape[1] if self.layout == "NCHW" else self.shape[3]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["shape"] = list(self.shape)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        out["quant"] = (
            None if self.quant is None else {"scale": self.quant[0], "zero_point": self.quant[1]}
        )
        return out

    @classmethod
    def from_dict(cls, d: dict) -> InputSpec:
        quant = d.get("quant")
        return cls(
            name=d["name"],
            shape=tuple(d["shape"]),
            dtype=d["dtype"],
            layout=d["layout"],
            color=d["color"],
            resize=d["resize"],
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            crop_fraction=d.get("crop_fraction", 0.875),
            pad_value=d.get("pad_value", 114),
            quant=None if quant is None else (float(quant["scale"]), int(quant["zero_point"])),
        )


@dataclass(frozen=True)
class OutputSpec:
    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"
    quant: tuple[float, int] | None = None  # set when the model emits integers to dequantize

    def to_dict(self) -> dict:
        out = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.quant is not None:
            out["quant"] = {"scale": self.quant[0], "zero_point": self.quant[1]}
        return out

    @classmethod
    def from_dict(cls, d: dict) -> OutputSpec:
        quant = d.get("quant")
        return cls(
            name=d["name"],
            shape=tuple(d["shape"]),
            dtype=d["dtype"],
            quant=None if quant is None else (float(quant["scale"]), int(quant["zero_point"])),
        )


@dataclass(frozen=True)
class TaskSpec:
    type: str  # "classify" | "detect"
    decoder: str  # registry name, e.g. "topk", "yolov8"
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RuntimeSpec:
    backend: str  # "onnxruntime" | "openvino" | "litert"
    threads: int
    providers: tuple[str, ...] = ()
    provider_options: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FileEntry:
    path: str
    sha256: str


@dataclass(frozen=True)
class Manifest:
    target: str
    profile: str
    precision: str
    format: str
    runtime: RuntimeSpec
    files: dict[str, FileEntry]
    inputs: tuple[InputSpec, ...]
    outputs: tuple[OutputSpec, ...]
    task: TaskSpec
    labels: tuple[str, ...] = ()
    quantization: dict | None = None
    source: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    calibration_stats: dict | None = None
    created_by: str = ""
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "created_by": self.created_by,
            "target": self.target,
            "profile": self.profile,
            "precision": self.precision,
            "format": self.format,
            "runtime": {
                "backend": self.runtime.backend,
                "threads": self.runtime.threads,
                "providers": list(self.runtime.providers),
                "provider_options": self.runtime.provider_options,
                "options": self.runtime.options,
            },
            "files": {k: {"path": f.path, "sha256": f.sha256} for k, f in self.files.items()},
            "inputs": [i.to_dict() for i in self.inputs],
            "outputs": [o.to_dict() for o in self.outputs],
            "task": {"type": self.task.type, "decoder": self.task.decoder,
                     "params": self.task.params},
            "quantization": self.quantization,
            "source": self.source,
            "metrics": self.metrics,
            "calibration_stats": self.calibration_stats,
        }

    def write(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_dict(cls, d: dict, labels: tuple[str, ...] = ()) -> Manifest:
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ManifestError(
                f"manifest schema_version {version!r} is not understood by this edge_sdk "
                f"(it reads version {SCHEMA_VERSION}); re-export the bundle with a matching "
                "edge-opt or upgrade edge_sdk"
            )
        try:
            jsonschema.validate(d, _schema())
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
            raise ManifestError(f"manifest field {where}: {exc.message}") from None
        rt = d["runtime"]
        return cls(
            target=d["target"],
            profile=d["profile"],
            precision=d["precision"],
            format=d["format"],
            runtime=RuntimeSpec(
                backend=rt["backend"],
                threads=rt["threads"],
                providers=tuple(rt.get("providers", ())),
                provider_options=rt.get("provider_options", {}),
                options=rt.get("options", {}),
            ),
            files={k: FileEntry(v["path"], v["sha256"]) for k, v in d["files"].items()},
            inputs=tuple(InputSpec.from_dict(i) for i in d["inputs"]),
            outputs=tuple(OutputSpec.from_dict(o) for o in d["outputs"]),
            task=TaskSpec(d["task"]["type"], d["task"]["decoder"], d["task"].get("params", {})),
            labels=labels,
            quantization=d.get("quantization"),
            source=d.get("source", {}),
            metrics=d.get("metrics", {}),
            calibration_stats=d.get("calibration_stats"),
            created_by=d.get("created_by", ""),
            schema_version=version,
        )

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        """Read and validate `folder/manifest.json` (and `labels.txt` if the manifest names it)."""
        folder = Path(folder)
        path = folder / MANIFEST_NAME
        if not folder.is_dir():
            raise ManifestError(f"bundle folder {folder} does not exist; pass the folder that "
                                "`edge-opt export` wrote (it holds manifest.json)")
        if not path.is_file():
            raise ManifestError(f"{folder} has no {MANIFEST_NAME}; is it a bundle written by "
                                "`edge-opt export`?")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ManifestError(f"{path} is not valid JSON ({exc}); re-export the bundle") from None
        if not isinstance(data, dict):
            raise ManifestError(f"{path} must hold a JSON object")
        labels: tuple[str, ...] = ()
        entry = data.get("files", {}).get("labels") if isinstance(data.get("files"), dict) else None
        if isinstance(entry, dict) and (folder / str(entry.get("path", ""))).is_file():
            labels = tuple((folder / entry["path"]).read_text().splitlines())
        return cls.from_dict(data, labels)


@lru_cache(maxsize=1)
def _schema() -> dict:
    return json.loads((Path(__file__).with_name("manifest.schema.json")).read_text())
