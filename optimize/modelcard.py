"""What the model expects and what it outputs: preprocessing, task, decoder and labels.

Resolved once, in this order: command-line flags > model card file (YAML or JSON) > what the
model itself says (ONNX metadata, e.g. Ultralytics exports) > defaults from the tensor shapes.
"""

from __future__ import annotations

import ast
import json
import math
import reprlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from edge_sdk.decoders import decoder_names
from edge_sdk.manifest import InputSpec, TaskSpec
from edge_sdk.preprocess import RESIZE_MODES, FrameTransform
from optimize.callables import is_decoder_spec, register_user_decoder
from optimize.errors import ToolchainError
from optimize.intake import SourceModel
from optimize.tasks import get_task

CARD_KEYS = {"task", "decoder", "decoder_params", "labels", "preprocess"}
PREPROCESS_KEYS = {"color", "layout", "resize", "mean", "std", "crop_fraction", "pad_value"}


@dataclass
class ModelCard:
    """Everything about the model that is not in its weights; all fields optional."""

    task: str | None = None
    decoder: str | None = None
    decoder_params: dict = field(default_factory=dict)
    labels: list[str] | None = None
    preprocess: dict = field(default_factory=dict)

    def merged_over(self, base: ModelCard) -> ModelCard:
        """Fields set here win over `base`."""
        return ModelCard(
            task=self.task or base.task,
            decoder=self.decoder or base.decoder,
            decoder_params={**base.decoder_params, **self.decoder_params},
            labels=self.labels if self.labels is not None else base.labels,
            preprocess={**base.preprocess, **self.preprocess},
        )


MAX_TEXT_BYTES = 16 << 20  # a labels file or model card larger than this is not one


def read_text(path: Path, what: str, expected: str) -> str:
    """A small UTF-8 text file, or one line saying why it is not (a binary file is the usual
    mistake: the wrong path)."""
    try:
        size = path.stat().st_size
        data = b"" if size > MAX_TEXT_BYTES else path.read_bytes()
    except OSError as exc:
        raise ToolchainError(f"{what} {path} cannot be read ({exc.strerror}); give {expected}"
                             ) from None
    if size > MAX_TEXT_BYTES:
        raise ToolchainError(f"{what} {path} is {size / 2**20:.0f} MB, not {expected}; check "
                             "the path")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = "\0"
    if "\0" in text:
        raise ToolchainError(f"{what} {path} is not UTF-8 text (a binary file?); give {expected}")
    return text


def read_labels(path: Path) -> list[str]:
    if path.is_dir():
        raise ToolchainError(f"labels file {path} is a folder; give a text file with one class "
                             "name per line")
    if not path.is_file():
        raise ToolchainError(f"labels file {path} not found; give a text file with one class "
                             "name per line")
    text = read_text(path, "labels file", "a text file with one class name per line")
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_card(path: Path) -> ModelCard:
    """The card's fields, each checked for the type it must have: a wrong one is one line
    naming the file and key here, not a traceback after the export's work."""
    if not path.is_file():
        raise ToolchainError(f"model card {path} not found")
    try:
        # YAML is a superset of JSON
        data = yaml.safe_load(read_text(path, "model card", "a YAML or JSON file"))
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ToolchainError(f"model card {path} is not valid YAML/JSON{at}: {problem}; fix "
                             "that line (key: value pairs, spaces not tabs)") from None
    except RecursionError:
        raise ToolchainError(f"model card {path} is nested too deeply to read; a model card is "
                             f"a mapping of keys {sorted(CARD_KEYS)} with flat values") from None
    if not isinstance(data, dict):
        raise ToolchainError(f"model card {path} must be a mapping of keys "
                             f"{sorted(CARD_KEYS)}, got {type(data).__name__}")
    if set(data) - CARD_KEYS:
        raise ToolchainError(f"model card {path}: unknown keys "
                             f"{sorted(map(str, set(data) - CARD_KEYS))}; keys must be among "
                             f"{sorted(CARD_KEYS)}")

    def bad(key: str, expected: str, value: object) -> ToolchainError:
        return ToolchainError(f"model card {path}: {key} must be {expected}, got {_show(value)}")

    for key in ("task", "decoder"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise bad(key, "a name (text)", data[key])
    params = {} if data.get("decoder_params") is None else data["decoder_params"]
    if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
        raise bad("decoder_params", 'a mapping of parameter names to values, e.g. {top_k: 5}',
                  params)
    pre = {} if data.get("preprocess") is None else data["preprocess"]
    if not isinstance(pre, dict):
        raise bad("preprocess", "a mapping, e.g. {resize: letterbox, mean: 0, std: 255}", pre)
    if set(pre) - PREPROCESS_KEYS:
        raise ToolchainError(f"model card {path}: preprocess keys must be among "
                             f"{sorted(PREPROCESS_KEYS)}, got "
                             f"{sorted(map(str, set(pre) - PREPROCESS_KEYS))}")
    pre = {k: _card_preprocess_value(k, v, lambda expected, value, k=k: bad(
        f"preprocess.{k}", expected, value)) for k, v in pre.items()}
    labels = data.get("labels")
    if isinstance(labels, str):
        labels = read_labels(path.parent / labels)
    elif labels is not None:
        labels = _card_labels(labels, bad)
    return ModelCard(task=data.get("task"), decoder=data.get("decoder"),
                     decoder_params=params, labels=labels, preprocess=pre)


CHOICES = {"color": ("RGB", "BGR", "GRAY"), "layout": ("NCHW", "NHWC"), "resize": RESIZE_MODES}


def _card_preprocess_value(key: str, value: object, bad) -> object:
    """A card's preprocess value in the form the flags give it: mean/std as a list of floats
    (from a number, a list, or the flag's text "127,127,127"), pad_value an integer 0-255."""
    if key in CHOICES:
        if value not in CHOICES[key]:
            raise bad("one of " + ", ".join(CHOICES[key]), value)
        return value
    if key in ("mean", "std"):
        expected = 'a number, a list of numbers or "123.7,116.3,103.5" (one per channel)'
        if isinstance(value, str):
            try:
                values = [float(v) for v in value.replace(" ", "").split(",")]
            except ValueError:
                raise bad(expected, value) from None
        else:
            values = value if isinstance(value, list) else [value]
            if not values or not all(_is_number(v) for v in values):
                raise bad(expected, value)
            values = [float(v) for v in values]
        if not values or not all(math.isfinite(v) for v in values):
            raise bad(expected, value)
        return values
    if key == "pad_value":
        if not (_is_number(value) and float(value).is_integer() and 0 <= value <= 255):
            raise bad("an integer 0-255, the grey level of the padding (114)", value)
        return int(value)
    return value  # crop_fraction: checked with the flag's own value (_check_preprocess)


def _card_labels(labels: object, bad) -> list[str]:
    """Class names from a list, or from a mapping of class index to name (Ultralytics' `names`:
    {0: person, 1: bicycle}, JSON's {"0": "person"}) with every index 0..n-1 once."""
    expected = ("a list of class names, a mapping {0: name, 1: name, ...} or a labels file "
                "name")
    if isinstance(labels, dict):
        index = {}
        for k, v in labels.items():
            i = k if isinstance(k, int) and not isinstance(k, bool) else (
                int(k) if isinstance(k, str) and k.strip().isdigit() else None)
            if i is None:
                raise bad("labels", expected + " (its keys class indexes)", k)
            if i in index:
                raise bad("labels", "a mapping with each class index once", labels)
            index[i] = v
        if sorted(index) != list(range(len(index))):
            missing = sorted(set(range(len(index))) - set(index))
            raise bad("labels", f"a mapping with class indexes 0..{len(index) - 1}, each once "
                                f"(missing {_show(missing)})", labels)
        labels = [index[i] for i in range(len(index))]
    if not isinstance(labels, list):
        raise bad("labels", expected, labels)
    names = []
    for i, name in enumerate(labels):
        if isinstance(name, int) and not isinstance(name, bool):
            name = str(name)
        if not isinstance(name, str) or not name.strip():
            raise bad(f"labels[{i}]", "a class name (quote names YAML reads otherwise: "
                                      "'yes', 'null')", name)
        names.append(name.strip())
    return names


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60
_SHORT.maxlevel = 3


def _show(value: object) -> str:
    """A value as the user wrote it, shortened (a card may hold huge or deep values)."""
    return _SHORT.repr(value)


def card_from_metadata(source: SourceModel) -> ModelCard:
    """Ultralytics ONNX exports carry task, names, imgsz and stride in metadata_props."""
    meta = source.metadata or {}
    if "names" not in meta or "task" not in meta:
        return ModelCard()
    try:
        names = ast.literal_eval(meta["names"])
    except (ValueError, SyntaxError):
        names = {}
    labels = [names[k] for k in sorted(names)] if isinstance(names, dict) else None
    # Ultralytics tasks this toolchain decodes; the others (obb) run as raw tensors, judged
    # by SQNR. End-to-end (NMS in the graph) pose/seg exports also stay raw.
    end2end = meta.get("end2end", meta.get("nms", "False")) in ("True", "true")
    decoder = ULTRALYTICS_DECODERS.get((meta["task"], end2end))
    task = meta["task"] if meta["task"] == "classify" or decoder else "raw"
    card = ModelCard(task=task, labels=labels,
                     preprocess={"color": "RGB", "mean": [0, 0, 0], "std": [255, 255, 255]})
    if task != "classify":
        card.preprocess["resize"] = "letterbox"
    if decoder:
        card.decoder = decoder
        if labels and not end2end:
            card.decoder_params["num_classes"] = len(labels)
    if decoder == "yolov8-pose" and "kpt_shape" in meta:
        try:
            card.decoder_params["kpt_shape"] = [int(v) for v in ast.literal_eval(
                meta["kpt_shape"])]
        except (ValueError, SyntaxError, TypeError):
            raise ToolchainError(f"the model's kpt_shape metadata {meta['kpt_shape']!r} is "
                                 "not [K, D]; pass --decoder-params '{\"kpt_shape\": [17, 3]}'"
                                 ) from None
    return card


# (Ultralytics metadata task, NMS in the graph) -> decoder
ULTRALYTICS_DECODERS = {("detect", False): "yolov8", ("detect", True): "yolo-nms",
                        ("pose", False): "yolov8-pose", ("segment", False): "yolov8-seg"}


def default_card(source: SourceModel) -> ModelCard:
    """What the tensor shapes suggest: one (1, C) output is a classifier; one single-channel
    probability map is a binary segmentation; anything else is raw tensors, which export, run
    and are judged by SQNR without a decoder."""
    classifier = len(source.output_shapes) == 1 and len(source.output_shapes[0]) == 2
    task = ("classify" if classifier else
            "segment" if is_probability_map(source) else "raw")
    card = ModelCard(task=task,
                     preprocess={"color": "RGB", "resize": "stretch", "mean": [0.0, 0.0, 0.0],
                                 "std": [255.0, 255.0, 255.0]})
    if classifier and ends_in_softmax(source):
        card.decoder_params["softmax"] = False  # already probabilities: no second softmax
    return card


def is_probability_map(source: SourceModel) -> bool:
    """One [1, 1, H, W] or [1, H, W, 1] output made by a Sigmoid: a foreground probability per
    pixel (PP-OCR's text map, MediaPipe's person mask). Its int8 copy is judged the way such a
    map is used, as a mask (IoU of the pixels over 0.5 against FP32's), not by SQNR: on 20
    rendered pages PP-OCRv4's int8 map kept a text-mask IoU of 0.84 at 8.5 dB SQNR, because
    the error sits on the text's edges, where the probability crosses over anyway."""
    if len(source.output_shapes) != 1:
        return False
    shape = source.output_shapes[0]
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape):
        return False
    single = (shape[1] == 1 and min(shape[2:]) > 1) or (shape[3] == 1 and min(shape[1:3]) > 1)
    return single and _output_producer(source) == "Sigmoid"


def _is_score_vector(shape: tuple) -> bool:
    """(N, C), or C with ones around it, e.g. (N, C, 1, 1); unknown sizes are given the benefit
    of the doubt."""
    sizes = [d for d in shape[1:] if not isinstance(d, int) or d != 1]
    return len(sizes) <= 1


def ends_in_softmax(source: SourceModel) -> bool:
    """Whether the first output is produced by a Softmax (through reshapes)."""
    return _output_producer(source) == "Softmax"


def _output_producer(source: SourceModel) -> str | None:
    """The op type that computes the first output, looking through reshapes."""
    import onnx

    graph = onnx.load(str(source.onnx_path), load_external_data=False).graph
    producer = {o: n for n in graph.node for o in n.output}
    node = producer.get(graph.output[0].name)
    while node is not None and node.op_type in ("Reshape", "Flatten", "Squeeze", "Identity"):
        node = producer.get(node.input[0])
    return None if node is None else node.op_type


def resolve_card(source: SourceModel, flags: ModelCard, card_path: Path | None) -> ModelCard:
    card = flags
    if card_path is not None:
        card = card.merged_over(read_card(card_path))
    if card.decoder and is_decoder_spec(card.decoder):  # a user's decoder: file.py:Name
        name, decoder_task = register_user_decoder(card.decoder)
        if card.task is None and decoder_task is None:
            raise ToolchainError(f"--decoder {card.decoder}: say which task it decodes, with "
                                 "a `task` attribute on it (detect, classify, raw) or --task")
        card = replace(card, decoder=name, task=card.task or decoder_task)
    meta_task = card_from_metadata(source).task
    if card.task is not None and meta_task not in (None, "raw", card.task) and card.task != "raw":
        # a semantic map decoded from a detector's rows passed as a perfect segmentation
        raise ToolchainError(f"--task {card.task}: the model's own metadata (Ultralytics "
                             f"export) says it is a {meta_task} model; drop --task, or pass "
                             "--task raw to keep its bare tensors")
    guessed = card_from_metadata(source).merged_over(default_card(source))
    own_task = guessed.task  # what the model's metadata, else its shapes, say
    if card.task is not None and card.task != guessed.task:
        guessed = ModelCard(preprocess=guessed.preprocess)  # the user's task: not its decoder
    card = card.merged_over(guessed)
    task = get_task(card.task)
    if task.name == "classify" and not _is_score_vector(source.output_shapes[0]):
        raise ToolchainError(f"--task classify: the model's output {list(source.output_shapes[0])}"
                             f" is not one score per class (N, C); the model suggests "
                             f"--task {own_task} (or drop --task)")
    if card.decoder is None:
        card.decoder = task.default_decoder
    if card.decoder is None:
        raise ToolchainError(f"a {task.name} model needs --decoder: one of "
                             f"{', '.join(task.decoders)}, or your own as file.py:Name "
                             "(or a --card file)")
    if card.decoder not in decoder_names():
        raise ToolchainError(f"unknown decoder {card.decoder!r}; choose one of "
                             f"{', '.join(decoder_names())} with --decoder")
    return card


def check_decoder_fits(source: SourceModel, card: ModelCard) -> None:
    """The card's decoder must read the model's outputs, checked on one blank input before any
    work: a --task or --decoder that does not fit them (pose on a plain detector, yolov5 on a
    YOLOv8 head) otherwise failed only once a bundle was built and run, minutes later, without
    saying what to pass instead."""
    import numpy as np
    import onnxruntime as ort

    from edge_sdk.decoders import build_decoder
    from optimize.tasks.segment import proto_grid

    try:
        session = ort.InferenceSession(str(source.onnx_path),
                                       providers=["CPUExecutionProvider"])
        outputs = session.run(None, {source.input_name: np.zeros(source.input_shape,
                                                                 np.float32)})
    except Exception:  # not this check's to judge: the export reports what the runtime says
        return
    # its parameters are checked as it is built: a missing one is said as such
    decoder = build_decoder(card.decoder, task_spec(card, source).params,
                            tuple(card.labels or ()))
    transform = proto_grid(outputs)
    if not transform.input_w:  # as edge-run gives it: decoders check outputs against the input
        height, width = _input_hw(source, card)
        transform = FrameTransform(1.0, 1.0, input_w=width, input_h=height)
    try:
        decoder(list(outputs), transform)
    except Exception as exc:  # built-in decoders raise ManifestError, a user's anything
        own = card_from_metadata(source).merged_over(default_card(source))
        hint = f"--task {own.task}" + (f" --decoder {own.decoder}" if own.decoder else "")
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else (
            type(exc).__name__)
        raise ToolchainError(f"--task {card.task} with decoder {card.decoder} cannot read "
                             f"this model's outputs ({first}); the model suggests {hint} "
                             "(or drop --task and --decoder)") from None


def _input_hw(source: SourceModel, card: ModelCard) -> tuple[int, int]:
    """The model input's (height, width), in the layout input_spec settles on."""
    shape = source.input_shape
    return (shape[2], shape[3]) if _layout(source, card) == "NCHW" else (shape[1], shape[2])


def _layout(source: SourceModel, card: ModelCard) -> str:
    """The card's input layout, else NCHW when the second axis holds 1 or 3 channels."""
    shape = source.input_shape
    return card.preprocess.get("layout") or ("NCHW" if shape[1] in (1, 3) else "NHWC")


def input_spec(source: SourceModel, card: ModelCard) -> InputSpec:
    """The manifest's InputSpec for the FP32 model, checked for consistency."""
    pre = card.preprocess
    shape = source.input_shape
    layout = _layout(source, card)
    channels = shape[1] if layout == "NCHW" else shape[3]
    color = pre.get("color", "RGB") if channels == 3 else "GRAY"
    resize = pre.get("resize", "stretch")
    if resize not in RESIZE_MODES:
        modes = ", ".join(RESIZE_MODES)
        raise ToolchainError(f"unknown resize mode {resize!r}; use one of {modes}")
    mean = [float(v) for v in pre.get("mean", [0.0, 0.0, 0.0])]
    std = [float(v) for v in pre.get("std", [255.0, 255.0, 255.0])]
    for name, values in (("mean", mean), ("std", std)):
        if channels == 1 and len(set(values)) == 1:
            values[:] = values[:1]  # one value given (or repeated by default) for a grey input
        if len(values) == 1:
            values[:] = values * channels
        if len(values) != channels:
            raise ToolchainError(f"--{name} needs 1 or {channels} values, got {len(values)}")
    _check_preprocess(mean, std, pre.get("crop_fraction", 0.875))
    return InputSpec(
        name=source.input_name, shape=tuple(shape), dtype="float32", layout=layout, color=color,
        resize=resize, mean=tuple(mean), std=tuple(std),
        crop_fraction=float(pre.get("crop_fraction", 0.875)),
        pad_value=int(pre.get("pad_value", 114)),
    )


def _check_preprocess(mean: list[float], std: list[float], crop_fraction: object) -> None:
    """Values the manifest would refuse, named as the user gave them (flag or card key) rather
    than as a manifest field after the export's work."""
    if not all(math.isfinite(v) for v in mean + std):
        raise ToolchainError("--mean and --std (or the card's preprocess mean/std) must be finite "
                             "numbers")
    if min(std) <= 0:
        raise ToolchainError(f"--std (or the card's preprocess std) must be above 0, got "
                             f"{min(std):g}: pixels are divided by it (255 for 0..1 inputs)")
    if (isinstance(crop_fraction, bool) or not isinstance(crop_fraction, (int, float))
            or not 0 < crop_fraction <= 1):
        raise ToolchainError(f"--crop-fraction (or the card's preprocess crop_fraction) must be "
                             f"in (0, 1], the share of the shorter side kept, got "
                             f"{crop_fraction!r}; e.g. 0.875")


def task_spec(card: ModelCard, source: SourceModel) -> TaskSpec:
    params = dict(card.decoder_params)
    if card.decoder == "raw":
        params.setdefault("output_names", list(source.output_names))
    return TaskSpec(type=card.task, decoder=card.decoder, params=params)


def parse_floats(text: str | None, flag: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        raise ToolchainError(
            f"{flag} takes comma-separated numbers, e.g. 123.7,116.3,103.5"
        ) from None


def parse_json_object(text: str | None, flag: str) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ToolchainError(f"{flag} must be a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise ToolchainError(f"{flag} must be a JSON object like '{{\"top_k\": 5}}'")
    return value
