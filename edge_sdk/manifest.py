"""The bundle manifest: everything a device needs to run a model, validated on load.

A bundle is untrusted input (it arrives over the network), so nothing in it is used before it
is checked. `Manifest.read` does, in this order:

1. size and shape of the file: manifest.json is at most 16 MB, valid UTF-8 JSON without
   NaN/Infinity, nested at most 32 levels (refused before or while parsing, never a
   RecursionError), no integer past 2**63 (never an OverflowError in float math later);
2. the JSON schema (`manifest.schema.json`): every field's type, range, size and enum,
   unknown keys refused, and the runtime options a bundle may pass to its runtime allow-listed
   per backend (nothing that writes files or loads code, e.g. OpenVINO's CACHE_DIR);
3. what the schema cannot say: one mean/std per channel (or one for all), quantization only
   on integer inputs, tensor names unique, calibration histograms well formed;
4. the bundle path rule below, for every file the manifest names;
5. (with `verify`) every file's sha256; only then is labels.txt read (at most 4 MB, UTF-8).

A decoder shipped as Python code (`files.decoder`, `task.decoder` = `bundle:decoder.py:Name`)
is only named here; edge_sdk/decoders/code.py decides whether it may run (`trust_code`).

Bundle path rule (containment): a `files` path is relative to the bundle folder, written with
`/`, without `..`, a drive, a backslash or a NUL; after following symlinks it must still be
inside the (resolved) bundle folder, and it must be a regular file. Anything else is refused
with the same message whether or not the outside file exists, and nothing outside the bundle
is opened or hashed. A symlink that stays inside the bundle is allowed. manifest.json itself
follows the same rule.

The dataclasses here are what the rest of the runtime trusts. Unknown schema versions are
refused rather than guessed at.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path, PurePosixPath, PureWindowsPath

import jsonschema

from edge_sdk.errors import BundleError, HashMismatchError, ManifestError
from edge_sdk.hashing import sha256_file

READS_SCHEMA_VERSIONS = (1, 2)  # edge-opt writes the oldest that fits (Manifest.needed_version)
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 16 << 20
MAX_LABELS_BYTES = 4 << 20
MAX_DEPTH = 32  # JSON nesting; real manifests use fewer than 8 levels
REEXPORT = "re-export the bundle with edge-opt (or correct manifest.json)"


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
    max_batch: int = 1  # frames per model call (>1: the model's batch dimension is dynamic)
    max_wait_ms: float | None = None  # how long the batcher waits for stragglers
    workers: int | None = None  # batches in the model at once (None: the runtime's default)


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
    format_selection: dict | None = None  # what `edge-opt export --format auto` measured
    created_by: str = ""
    schema_version: int = 1  # written as at least what the content needs (needed_version)

    def needed_version(self) -> int:
        """The oldest schema version that describes this bundle, so a device whose edge_sdk
        is not yet updated loads every bundle it can run and refuses the others in one line
        ("upgrade edge_sdk") instead of a misleading "no output named ...". Version 2: a TFLite
        bundle names its tensors as the source model did ("output:0") while the model's
        signature has the identifier form ("output_0"), in a role with more than one tensor
        (version 1 readers matched a lone tensor whatever its name, and several by name only)."""
        from edge_sdk.backends.model_io import signature_name  # model_io imports this module

        if self.format == "tflite" and any(
                len(specs) > 1 and any(signature_name(s.name) != s.name for s in specs)
                for specs in (self.inputs, self.outputs)):
            return 2
        return 1

    def to_dict(self) -> dict:
        return {
            "schema_version": max(self.schema_version, self.needed_version()),
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
                **_batching(self.runtime),
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
            # written only when set, so other manifests read the same as before the field
            **({} if self.format_selection is None
               else {"format_selection": self.format_selection}),
        }

    def write(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_dict(cls, d: dict, labels: tuple[str, ...] = (), source: str = "the manifest"
                  ) -> Manifest:
        """Validate a parsed manifest (schema, then cross-field rules) and build it; `source`
        names it (the bundle's manifest.json) in an error no rule foresaw."""
        if not isinstance(d, dict):
            raise ManifestError("the manifest must be a JSON object; " + REEXPORT)
        version = d.get("schema_version")
        if type(version) is not int or version not in READS_SCHEMA_VERSIONS:
            raise ManifestError(
                f"manifest schema_version {version!r} is not understood by this edge_sdk "
                f"(it reads versions {', '.join(map(str, READS_SCHEMA_VERSIONS))}); re-export "
                "the bundle with a matching edge-opt or upgrade edge_sdk"
            )
        depth = _depth(d)
        if depth > MAX_DEPTH:
            raise ManifestError(f"the manifest is nested {depth}+ levels deep (at most "
                                f"{MAX_DEPTH}); {REEXPORT}")
        huge = _huge_integer(d)
        if huge is not None:
            where, digits = huge
            raise ManifestError(f"{source}: field {where} is a {digits}-digit integer, larger "
                                f"than any manifest number (at most 2**63); {REEXPORT}")
        try:
            return cls._build(d, labels)
        except (OverflowError, RecursionError, ValueError) as exc:  # a safety net: never a trace
            raise ManifestError(f"{source} holds a value the runtime cannot use "
                                f"({_short(str(exc), 120)}); {REEXPORT}") from None

    @classmethod
    def _build(cls, d: dict, labels: tuple[str, ...]) -> Manifest:
        """The schema, the cross-field rules, then the dataclasses; `d` is at most MAX_DEPTH
        deep and holds no integer past 2**63."""
        error = jsonschema.exceptions.best_match(_validator().iter_errors(d))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
            raise ManifestError(f"manifest field {where}: {_short(error.message)}; {REEXPORT}")
        _check_semantics(d)
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
                max_batch=rt.get("max_batch", 1),
                max_wait_ms=rt.get("max_wait_ms"),
                workers=rt.get("workers"),
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
            format_selection=d.get("format_selection"),
            created_by=d.get("created_by", ""),
            schema_version=d["schema_version"],
        )

    @classmethod
    def read(cls, folder: Path, verify: bool = False) -> Manifest:
        """Read and validate `folder/manifest.json`, check every file it names against the
        bundle path rule (and, with `verify`, its sha256), then read `labels.txt` if named."""
        folder = Path(folder)
        if folder.is_file():
            raise ManifestError(_file_not_bundle(folder))
        if not folder.is_dir():
            raise ManifestError(f"bundle folder {folder} does not exist; pass the folder that "
                                "`edge-opt export` wrote (it holds manifest.json)")
        if not os.path.lexists(folder / MANIFEST_NAME):  # a link is judged by bundle_path
            raise ManifestError(_no_manifest(folder))
        path = bundle_path(folder, MANIFEST_NAME, "manifest")
        manifest = cls.from_dict(_parse(path), source=str(path))
        paths = {key: bundle_path(folder, entry.path, key) for key, entry in manifest.files.items()}
        if verify:
            for key, entry in manifest.files.items():
                if sha256_file(paths[key]) != entry.sha256:
                    raise HashMismatchError(
                        f"{entry.path} in {folder} does not match the sha256 in manifest.json: "
                        "the file was changed or damaged; copy the bundle again or re-export it"
                    )
        if "labels" not in paths:
            return manifest
        return replace(manifest, labels=_read_labels(paths["labels"], manifest.files["labels"]))

    def path_of(self, folder: Path, key: str) -> Path:
        """The checked, resolved path of file `key` (see the bundle path rule)."""
        return bundle_path(Path(folder), self.files[key].path, key)


def _batching(rt: RuntimeSpec) -> dict:
    """Written only when set, so a batch-1 manifest reads the same as before batching."""
    out: dict = {"max_batch": rt.max_batch} if rt.max_batch != 1 else {}
    if rt.max_wait_ms is not None:
        out["max_wait_ms"] = rt.max_wait_ms
    if rt.workers is not None:
        out["workers"] = rt.workers
    return out


def bundle_path(folder: Path, relative: str, what: str) -> Path:
    """`folder/relative`, resolved, refused unless it obeys the bundle path rule.

    The lexical checks come first and touch no file, so nothing outside is probed; a symlink
    leading out is refused by where it points, not by whether the target exists."""
    pure = PurePosixPath(relative)
    if (pure.is_absolute() or PureWindowsPath(relative).drive or "\\" in relative
            or "\0" in relative or ".." in pure.parts):
        raise BundleError(f"manifest file {what!r} has path {relative!r}, which leads outside "
                          "the bundle: paths must be relative to the bundle folder, without "
                          "'..'; " + REEXPORT)
    root = folder.resolve()
    try:
        target = (root / pure).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        raise BundleError(f"manifest file {what!r} ({relative!r}) is a symlink loop; bundle "
                          "files must be regular files: copy the file in instead of linking "
                          "to it") from None
    if not target.is_relative_to(root):
        raise BundleError(f"manifest file {what!r} ({relative!r}) is a symlink that leads "
                          "outside the bundle; bundle files must be inside the bundle folder: "
                          "copy the file in instead of linking to it")
    if not target.exists():
        raise BundleError(f"bundle file {relative!r} ({what}) named in the manifest is missing "
                          f"from {folder}")
    if not target.is_file():
        raise BundleError(f"bundle file {relative!r} ({what}) in {folder} is not a regular file "
                          "(a folder, pipe or device); " + REEXPORT)
    return target


def _parse(path: Path) -> dict:
    """manifest.json -> dict, refusing oversize, non-UTF-8, NaN and too deep input."""
    with open(path, "rb") as f:
        raw = f.read(MAX_MANIFEST_BYTES + 1)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path} is larger than {MAX_MANIFEST_BYTES >> 20} MB; a manifest is "
                            f"a few KB: {REEXPORT}")
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except RecursionError:
        raise ManifestError(f"{path} is nested too deeply to be a manifest (at most "
                            f"{MAX_DEPTH} levels); {REEXPORT}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path} is not valid JSON ({_short(str(exc))}); re-export the "
                            "bundle") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path} must hold a JSON object")
    return data


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number a manifest may hold")


def _read_labels(path: Path, entry: FileEntry) -> tuple[str, ...]:
    with open(path, "rb") as f:
        raw = f.read(MAX_LABELS_BYTES + 1)
    if len(raw) > MAX_LABELS_BYTES:
        raise ManifestError(f"{entry.path} is larger than {MAX_LABELS_BYTES >> 20} MB; it "
                            "should hold one class name per line")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = "\0"
    if "\0" in text:
        raise ManifestError(f"{entry.path} is not UTF-8 text (one class name per line); "
                            "re-export the bundle with a text labels file")
    return tuple(text.splitlines())


def _depth(value: object) -> int:
    """How deeply lists/objects nest (iterative: no recursion limit to hit); stops counting
    once past MAX_DEPTH."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, (dict, list)):
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            break
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _huge_integer(value: object) -> tuple[str, int] | None:
    """(field path, digits) of the first integer past 2**63: JSON allows 400-digit integers, and
    float() or a C size of one raises OverflowError; no manifest field needs one."""
    stack: list[tuple[object, str]] = [(value, "")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, int) and not isinstance(item, bool):
            if abs(item) > 2**63:
                return where or "(top level)", int(item.bit_length() * math.log10(2)) + 1
        elif isinstance(item, (dict, list)):
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            stack.extend((child, f"{where}/{key}" if where else str(key)) for key, child in pairs)
    return None


def _check_semantics(d: dict) -> None:
    """What the schema cannot express; `d` has passed the schema."""
    for i, spec in enumerate(d["inputs"]):
        shape = spec["shape"]
        channels = shape[1] if spec["layout"] == "NCHW" else shape[3]
        where = f"inputs[{i}]"
        for key in ("mean", "std"):
            if len(spec[key]) not in (1, channels):
                raise ManifestError(f"{where}.{key} has {len(spec[key])} values for {channels} "
                                    f"channels: give one per channel or one for all; "
                                    + REEXPORT)
        quant = spec.get("quant")
        if quant is not None and spec["dtype"] not in ("int8", "uint8"):
            raise ManifestError(f"{where}.quant is set but dtype is {spec['dtype']}: only "
                                "int8/uint8 inputs are quantized; " + REEXPORT)
        if quant is None and spec["dtype"] == "int8":
            raise ManifestError(f"{where} is int8 without quant (scale, zero_point): the "
                                "runtime cannot quantize frames for it; " + REEXPORT)
    for role in ("inputs", "outputs"):
        names = [spec["name"] for spec in d[role]]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ManifestError(f"{role} name {twice[0]!r} appears twice; every tensor needs "
                                "its own name: " + REEXPORT)
    _check_code_decoder(d["task"]["decoder"], d["files"])
    _check_format_selection(d.get("format_selection"), d["format"])
    for key, hist in (d.get("calibration_stats") or {}).items():
        if key not in ("brightness", "top1_confidence"):
            continue
        edges, fractions = hist["edges"], hist["fractions"]
        if len(edges) != len(fractions) + 1 or not all(map(math.isfinite, edges)) or any(
                b <= a for a, b in zip(edges, edges[1:])):
            raise ManifestError(f"calibration_stats.{key}: edges must be {len(fractions) + 1} "
                                "finite, strictly increasing numbers (one more than fractions); "
                                + REEXPORT)


def _check_code_decoder(decoder: str, files: dict) -> None:
    """A decoder shipped as code is `bundle:<files.decoder.path>:<Name>`, a .py file; and
    files.decoder is only there for such a decoder (edge_sdk/decoders/code.py runs it)."""
    entry = files.get("decoder")
    if not decoder.startswith("bundle:"):
        if entry is not None:
            raise ManifestError("files.decoder is set but task.decoder "
                                f"{decoder!r} is a built-in decoder; " + REEXPORT)
        return
    path, _, name = decoder[len("bundle:"):].rpartition(":")
    if not path.endswith(".py") or not name.isidentifier():
        raise ManifestError(f"task.decoder {decoder!r}: a decoder shipped in the bundle is named "
                            "bundle:<file>.py:<Name>; " + REEXPORT)
    if entry is None or entry["path"] != path:
        raise ManifestError(f"task.decoder {decoder!r} names {path!r}, which the manifest's "
                            "files.decoder does not list; " + REEXPORT)


def _check_format_selection(selection: dict | None, fmt: str) -> None:
    """format_selection names each candidate format once, and the one chosen is the
    bundle's own format (a record that contradicts the bundle is refused, not shown)."""
    if selection is None:
        return
    names = [c["format"] for c in selection["candidates"]]
    chosen = [c["format"] for c in selection["candidates"] if c["chosen"]]
    if len(set(names)) != len(names) or chosen != [fmt] or selection["chosen"] != fmt:
        raise ManifestError(f"format_selection must list each candidate format once and mark "
                            f"exactly the bundle's format {fmt!r} as chosen; " + REEXPORT)


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _whole_number(checker, instance) -> bool:
    """JSON Schema's "integer" admits 2.0; runtimes given 2.0 threads or a 300.0-pixel shape
    fail later with their own errors, so a manifest's integers must be written as such."""
    return isinstance(instance, int) and not isinstance(instance, bool)


@lru_cache(maxsize=1)
def _validator() -> jsonschema.Draft202012Validator:
    base = jsonschema.Draft202012Validator
    strict = jsonschema.validators.extend(
        base, type_checker=base.TYPE_CHECKER.redefine("integer", _whole_number))
    return strict(_schema())


@lru_cache(maxsize=1)
def _schema() -> dict:
    return json.loads((Path(__file__).with_name("manifest.schema.json")).read_text())


# Files users pass where a bundle folder goes: a model (before export) or one of its files.
MODEL_SUFFIXES = {".onnx", ".tflite", ".xml", ".bin", ".pt", ".pth", ".torchscript", ".engine"}


def _no_manifest(folder: Path) -> str:
    """An export's --out folder holds one bundle per target: name them instead of asking."""
    try:
        bundles = sorted(p.name for p in folder.iterdir() if (p / MANIFEST_NAME).is_file())
    except OSError:
        bundles = []
    if bundles:
        return (f"{folder} is an `edge-opt export` output folder, not a bundle: pass one of "
                f"its bundles ({', '.join(bundles)}), e.g. {folder / bundles[0]}")
    return f"{folder} has no {MANIFEST_NAME}; is it a bundle written by `edge-opt export`?"


def _file_not_bundle(path: Path) -> str:
    """What to pass instead of a file: the bundle folder it sits in, or a bundle made from it."""
    if (path.parent / MANIFEST_NAME).is_file():
        return f"{path} is a file of the bundle {path.parent}; pass the bundle folder {path.parent}"
    suffix = path.suffix.lower()
    if suffix in MODEL_SUFFIXES:
        source = "" if suffix == ".onnx" else " from its ONNX source (or a PyTorch file.py:fn)"
        model = path if suffix == ".onnx" else "MODEL.onnx"
        return (f"{path} is a model file, not a bundle folder; make a bundle{source} with "
                f"`edge-opt export {model} --target TARGET --out DIR` (TARGET e.g. x86-int8; "
                "`edge-opt profiles` lists them) and pass DIR/TARGET")
    return (f"{path} is a file, not a bundle folder; pass the folder that `edge-opt export` "
            f"wrote (it holds {MANIFEST_NAME})")
