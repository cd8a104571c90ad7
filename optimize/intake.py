"""Model intake: an .onnx file or a PyTorch factory (`file.py:fn`, `pkg.module:fn`) -> FP32 ONNX.

PyTorch models are exported with torch.onnx.export, simplified with onnxslim, and checked
against torch on the same input; the max abs difference is recorded for the manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edge_sdk.hashing import sha256_file
from optimize.callables import load_callable, user_error_text
from optimize.errors import ModelSourceError
from optimize.quiet import quiet

DEFAULT_OPSET = 18  # TensorRT 8.6+/10 (JetPack 6) parse it; --opset 17 for TensorRT 8.5 (JetPack 5)


@dataclass(frozen=True)
class SourceModel:
    """The FP32 ONNX model every target starts from, and where it came from."""

    onnx_path: Path
    kind: str  # "onnx" | "pytorch"
    spec: str  # what the user passed
    # ONNX: of the files in sha256_covers, their bytes in that order (the .onnx file, then its
    # external-data side files by name: `cat model.onnx model.onnx.data | sha256sum`); PyTorch:
    # of the state dict's tensors
    sha256: str
    input_name: str
    input_shape: tuple[int, ...]
    output_names: tuple[str, ...]
    output_shapes: tuple[tuple[int | str, ...], ...]
    export_max_abs_diff: float | None = None
    opset: int | None = None
    metadata: dict | None = None  # metadata_props of the ONNX model (e.g. Ultralytics names)
    sha256_covers: tuple[str, ...] = ()  # ONNX sources; recorded since weights in side files

    def to_dict(self) -> dict:
        covers = {"sha256_covers": list(self.sha256_covers)} if self.sha256_covers else {}
        return {
            "kind": self.kind,
            "spec": self.spec,
            "sha256": self.sha256,
            **covers,
            "input_shape": list(self.input_shape),
            "opset": self.opset,
            "export_max_abs_diff": self.export_max_abs_diff,
        }


MAX_INPUT_ELEMENTS = 1 << 28  # 1 GiB of float32: beyond it torch/numpy fail with a traceback


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """`--input-shape` as four positive integers, small enough to allocate one input tensor."""
    if text is None:
        return None
    try:
        shape = tuple(int(x) for x in text.lower().replace(",", "x").split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise ModelSourceError(f"--input-shape {text!r} must be four positive integers like "
                               "1x3x224x224 (batch x channels x height x width for NCHW)")
    if int(np.prod(shape, dtype=object)) > MAX_INPUT_ELEMENTS:
        raise ModelSourceError(f"--input-shape {text!r} is {np.prod(shape, dtype=object):,} "
                               f"values, over the {MAX_INPUT_ELEMENTS:,} one input may hold; give "
                               "the image size the model takes, e.g. 1x3x640x640")
    return shape


def is_pytorch_spec(spec: str) -> bool:
    """`file.py:fn` or `pkg.module:fn` (an .onnx path never is one)."""
    return not spec.lower().endswith(".onnx") and ":" in spec


def load_source(spec: str, workdir: Path, input_shape: tuple[int, ...] | None,
                opset: int = DEFAULT_OPSET, batch: int = 1) -> SourceModel:
    """Resolve `spec` to an FP32 ONNX file in `workdir`; `batch` > 1 keeps an ONNX model's
    dynamic batch dimension (checked to run `batch` frames as it runs one)."""
    workdir.mkdir(parents=True, exist_ok=True)
    if spec.lower().endswith(".onnx"):
        return _from_onnx(Path(spec), workdir, input_shape, batch)
    if ":" in spec:
        return export_torch(load_torch_module(spec), spec, workdir, input_shape, opset=opset)
    if Path(spec).exists() and Path(spec).suffix.lower() in (".pt", ".pth", ".ckpt", ".pt2"):
        raise ModelSourceError(f"{spec}: a PyTorch file is taken through a factory: file.py:build "
                               "returning the module (torch.jit.load(path) for TorchScript, your "
                               "class + load_state_dict for weights, "
                               "torch.export.load(path).module() for a .pt2)")
    if Path(spec).exists():
        raise ModelSourceError(f"{spec}: unsupported model file; give an .onnx file or a PyTorch "
                               "factory as file.py:function or package.module:function")
    raise ModelSourceError(f"model {spec!r} not found; give an .onnx file or a PyTorch factory "
                           "as file.py:function or package.module:function")


def _from_onnx(path: Path, workdir: Path, input_shape: tuple[int, ...] | None,
               batch: int = 1) -> SourceModel:
    import onnx

    model = _read_onnx(path)
    weights = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise ModelSourceError(f"{path} has {len(inputs)} inputs ({names}); edge-opt handles "
                               "single-image models: export it with the image as its only input "
                               "(the others fixed as constants)")
    _check_input_type(inputs[0], path.name)
    dims = inputs[0].type.tensor_type.shape.dim
    declared = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    if input_shape is None:
        input_shape = _metadata_shape(model, declared)
    shape = _fix_shape(declared, input_shape, path.name)
    if batch > 1 and declared and declared[0] is not None:
        raise ModelSourceError(f"{path.name} has a fixed batch dimension ({declared[0]}); "
                               "--batch needs a model exported with a dynamic batch axis")
    for i, (dim, value) in enumerate(zip(dims, shape)):
        dim.Clear()
        if i == 0 and batch > 1:
            dim.dim_param = "batch"
        else:
            dim.dim_value = value
    _forget_shapes(model.graph, keep_batch=batch > 1)
    model = _at_least_opset(model, MIN_ONNX_OPSET)
    # a model shape inference cannot read (> 2 GB, unknown domains) keeps unshaped outputs
    with contextlib.suppress(Exception):
        model = onnx.shape_inference.infer_shapes(model)
    _name_nodes(model.graph)
    out = workdir / "fp32.onnx"
    onnx.save(model, str(out))
    model = _slim_checked(out, np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32))
    if batch > 1:
        _check_batch(out, shape, batch)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    digest, covers = source_digest(path)
    described = _describe(out, "onnx", str(path), digest, None, model, opset)
    # one frame's shape, whatever the batch
    return replace(described, input_shape=shape, sha256_covers=covers)


def source_digest(path: Path) -> tuple[str, tuple[str, ...]]:
    """sha256 of an .onnx file and its external-data side files (`save_as_external_data`),
    read in that order, side files sorted by name, and the names it covers: the weights are
    the model as much as the graph. Without side files it is the .onnx file's own sha256, as
    bundles written before recorded it."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    graph = onnx.load(str(path), load_external_data=False).graph
    side = sorted({ExternalDataInfo(t).location for t in graph.initializer
                   if uses_external_data(t)})
    if not side:
        return sha256_file(path), (path.name,)
    digest = hashlib.sha256()
    for file in (path, *(path.parent / name for name in side)):
        with file.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest(), (path.name, *side)


def _read_onnx(path: Path):
    """Load and check an .onnx file and its external-data side files, refusing in one line what
    onnx's own errors describe as a corrupt model (an empty file, a side file left behind) and
    what would fail later (float16 weights)."""
    import onnx

    if not path.is_file():
        raise ModelSourceError(f"model file {path} not found; check the path")
    if path.stat().st_size == 0:
        raise ModelSourceError(f"{path} is empty (0 bytes); the export or download did not "
                               "finish: write or fetch it again")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError...
        raise _invalid(path, exc) from None
    missing = _missing_side_files(model, path.parent)
    if missing:
        raise ModelSourceError(
            f"{path} keeps its weights in {', '.join(missing)}, which is not in {path.parent}; "
            "put the side file next to the .onnx (or save the model with its weights inside)")
    _check_weight_type(model, path.name)
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
        onnx.checker.check_model(model)
    except Exception as exc:  # ValidationError, OSError...
        raise _invalid(path, exc) from None
    return model


def _invalid(path: Path, exc: Exception) -> ModelSourceError:
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return ModelSourceError(f"{path} is not a valid ONNX model ({first}); re-export it or check "
                            "the download")


def _check_weight_type(model, name: str) -> None:
    """A model whose weights are mostly float16 (onnxruntime's and onnxconverter's fp16
    converters, even with float32 inputs kept) is refused: every target starts from float32."""
    import onnx

    half = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    counts = {True: 0, False: 0}
    for tensor in model.graph.initializer:
        if tensor.data_type in (*half, onnx.TensorProto.FLOAT):
            counts[tensor.data_type in half] += int(np.prod(tensor.dims, dtype=np.int64))
    if counts[True] > counts[False]:
        raise ModelSourceError(f"{name} has float16 weights; edge-opt starts from a float32 "
                               "model and makes fp16 itself (-t x86-fp16): give the float32 "
                               "export")


def _missing_side_files(model, folder: Path) -> list[str]:
    """The external-data files (`save_as_external_data=True`) the weights name that are not in
    `folder`: onnx's own error for them reads like a corrupt model."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    wanted = {ExternalDataInfo(t).location for t in model.graph.initializer
              if uses_external_data(t)}
    return sorted(name for name in wanted if not (folder / name).is_file())


def _check_input_type(value_info, name: str) -> None:
    """Frames reach the model as float32 (preprocessing scales 0-255 pixels by --mean/--std);
    any other input type made onnxruntime raise a traceback on the first check run."""
    import onnx

    elem = value_info.type.tensor_type.elem_type
    if elem == onnx.TensorProto.FLOAT:
        return
    kind = onnx.helper.tensor_dtype_to_np_dtype(elem).name if elem else "untyped"
    if elem in (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE):
        raise ModelSourceError(f"{name}'s input is {kind}; edge-opt starts from a float32 "
                               "model and makes fp16 itself (-t x86-fp16): export it in float32")
    raise ModelSourceError(f"{name}'s input is {kind}; edge-opt feeds float32 frames "
                           "(scaled by --mean/--std): export it with a float32 input and give its "
                           "scaling as --mean/--std (x/255: --mean 0 --std 255)")


def _name_nodes(graph) -> None:
    """Give unnamed nodes unique names: quantization keeps layers float by node name, and an
    empty name there matched every unnamed node (MediaPipe's converted selfie model has no
    names: its "int8" export stayed entirely float)."""
    taken = {n.name for n in graph.node if n.name}
    for i, node in enumerate(graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def frames_agree(together: np.ndarray, alone: np.ndarray) -> bool:
    """Whether a batch's output equals its frames' outputs run one by one (concatenated),
    within 1e-3 of the output's magnitude (at least 1): float summation order, not a mix-up."""
    scale = max(float(np.max(np.abs(alone))), 1.0)
    return together.shape == alone.shape and float(np.max(np.abs(together - alone))) <= (
        1e-3 * scale)


def _check_batch(path: Path, shape: tuple[int, ...], batch: int) -> None:
    """The model must give each of `batch` frames what it gives that frame alone."""
    frames = np.random.default_rng(1).uniform(-1, 1, (batch, *shape[1:])).astype(np.float32)
    try:
        together = _run(path, frames)
        alone = np.concatenate([_run(path, frames[i : i + 1]) for i in range(batch)])
    except Exception as exc:  # onnxruntime refuses the batch (a reshape fixed at 1)
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelSourceError(f"{path.name} does not run {batch} frames at once ({first}); "
                               "export it with a dynamic batch axis or drop --batch") from None
    if not frames_agree(together, alone):
        raise ModelSourceError(f"{path.name} gives different answers for a frame in a batch of "
                               f"{batch} than alone: its batch dimension is not really "
                               "independent; drop --batch")


def _forget_shapes(graph, keep_batch: bool) -> None:
    """Drop the shapes a tool inferred for the dynamic input: their symbolic dims (a cut
    YOLO head's outputs read 'floor(2.0*((((height - 1)//2)) + 1 ...') would outlive the fixed
    input shape into the manifest; ONNX's shape inference recomputes them from the fixed one."""
    del graph.value_info[:]
    for output in graph.output:
        for i, dim in enumerate(output.type.tensor_type.shape.dim):
            if dim.HasField("dim_param") and not (i == 0 and keep_batch):
                dim.Clear()


def _fix_shape(declared: tuple, wanted: tuple[int, ...] | None, name: str) -> tuple[int, ...]:
    if len(declared) != 4:
        raise ModelSourceError(f"{name} takes a rank-{len(declared)} input; edge-opt expects an "
                               "image tensor of rank 4 (NCHW or NHWC)")
    if wanted is None:
        if any(d is None for d in declared[1:]):
            raise ModelSourceError(f"{name} has a dynamic input shape {_fmt(declared)}; "
                                   "pass --input-shape, e.g. 1x3x224x224")
        return (1,) + tuple(declared[1:])
    for have, want in zip(declared, wanted):
        if have is not None and have != want:
            raise ModelSourceError(
                f"--input-shape {_fmt(wanted)} does not match the model's input {_fmt(declared)}; "
                "drop --input-shape or give the model's own shape"
            )
    return wanted


MIN_ONNX_OPSET = 13  # per-channel int8 needs DequantizeLinear's `axis` (opset 13)


def _at_least_opset(model, version: int):
    """Older exports (PaddleOCR's are opset 12) are upgraded by onnx's version converter: the
    per-channel Q/DQ nodes int8 writes are invalid below opset 13."""
    import onnx

    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if current is None or current >= version:
        return model
    try:
        return onnx.version_converter.convert_version(model, version)
    except Exception as exc:  # the converter raises bare RuntimeErrors and ValidationErrors
        raise ModelSourceError(f"the model uses ONNX opset {current} and could not be upgraded "
                               f"to {version} ({str(exc)[:120]}); re-export it with opset >= "
                               f"{version}") from None


def _metadata_shape(model, declared: tuple) -> tuple[int, ...] | None:
    """A dynamic input's shape from Ultralytics metadata (`imgsz: [640, 640]`), if any."""
    import ast

    meta = {p.key: p.value for p in model.metadata_props}
    if "imgsz" not in meta or len(declared) != 4 or None not in declared[1:]:
        return None
    try:
        size = ast.literal_eval(meta["imgsz"])
    except (ValueError, SyntaxError):
        return None
    if isinstance(size, int):
        size = [size, size]
    if not (isinstance(size, (list, tuple)) and len(size) == 2
            and all(isinstance(v, int) and 0 < v <= 8192 for v in size)):
        return None
    channels = declared[1] or 3
    return (declared[0] or 1, channels, int(size[0]), int(size[1]))


def _fmt(shape: tuple) -> str:
    return "x".join("?" if d is None else str(d) for d in shape)


def _load_factory(spec: str):
    return load_callable(spec, "model factory", ModelSourceError,
                         "a function returning a torch.nn.Module")


def load_torch_module(spec: str):
    """Call the factory and check it returned an nn.Module in eval mode."""
    import torch

    factory = _load_factory(spec)
    try:
        module = factory()
    except Exception as exc:
        raise ModelSourceError(_factory_error(spec, exc)) from None
    if isinstance(module, torch.export.ExportedProgram):
        raise ModelSourceError(f"{spec} returned a torch.export ExportedProgram; return its "
                               "module: torch.export.load(path).module()")
    if not isinstance(module, torch.nn.Module):
        raise ModelSourceError(f"{spec} returned {type(module).__name__}, not a torch.nn.Module")
    _check_one_input(module, spec)
    _check_float32(module, spec)
    try:
        return module.eval()
    except NotImplementedError:  # ExportedProgram.module(): its mode was fixed when exported
        return _exported_module(module)


def _exported_module(graph_module):
    """torch.export.load(path).module() in a module whose train()/eval() do nothing: the
    graph's own raise NotImplementedError, and the ONNX and TFLite exporters call eval() on
    the model (or on a wrapper around it), which stopped both with a traceback. The graph was
    traced in one mode; there is nothing to switch."""
    import torch

    class ExportedModule(torch.nn.Module):
        from_torch_export = True  # is_traced_graph(): a graph, not the user's layers

        def __init__(self) -> None:
            super().__init__()
            self.graph_module = graph_module
            self.training = False

        def train(self, mode: bool = True):
            self.training = mode
            return self

        def forward(self, x):
            return self.graph_module(x)

    return ExportedModule()


def _factory_error(spec: str, exc: Exception) -> str:
    """One line (callables.user_error_text): torch.load's refusal of a whole pickled model
    was a dozen lines of advice, and load_state_dict's first line ends before the keys."""
    return f"{spec} raised {user_error_text(exc)}"


def _check_float32(module, spec: str) -> None:
    """A .half() or .double() model was refused as 'does not accept input shape ...: expected
    scalar type Float but found Half; check --input-shape': frames reach it as float32."""
    import torch

    kinds = {t.dtype for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()}
    other = sorted(str(k).removeprefix("torch.") for k in kinds - {torch.float32})
    if other:
        raise ModelSourceError(f"{spec} returned a model with {', '.join(other)} weights; "
                               "edge-opt starts from float32 and makes fp16 itself (-t x86-fp16): "
                               "return model.float()")


def _check_one_input(module, spec: str) -> None:
    """edge-opt feeds one image tensor; a forward needing more used to fail as 'does not
    accept input shape ...: missing 1 required positional argument', blaming --input-shape."""
    import inspect

    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):  # TorchScript methods have no Python signature
        return
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p.name for p in params if p.kind in positional and p.default is p.empty]
    if len(required) > 1:
        raise ModelSourceError(f"{spec}'s forward takes {len(required)} inputs "
                               f"({', '.join(required)}); edge-opt exports single-image models: "
                               "return a wrapper whose forward(x) passes the others as constants")


def export_torch(module, spec: str, workdir: Path, input_shape: tuple[int, ...] | None,
                 state_hash: str | None = None, opset: int = DEFAULT_OPSET) -> SourceModel:
    """Export an nn.Module to FP32 ONNX, slim it and check it numerically against torch.

    Opset 18+ uses the dynamo exporter; lower opsets the TorchScript one (the dynamo exporter
    cannot down-convert Pad to opset 17), and so does a TorchScript module (torch.jit.load),
    which torch.export cannot trace.
    """
    import torch

    if input_shape is None:
        raise ModelSourceError(f"{spec} is a PyTorch model: pass --input-shape, e.g. 1x3x224x224")
    torch.manual_seed(0)
    example = torch.rand(*input_shape) * 2 - 1
    try:
        with torch.no_grad():
            expected = module(example)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise ModelSourceError(f"{spec} does not accept input shape {_fmt(input_shape)}: {first}; "
                               "check --input-shape") from None
    expected, names = _torch_outputs(expected, spec)
    out = workdir / "fp32.onnx"
    try:
        with quiet():
            torch.onnx.export(module, (example,), str(out), input_names=["input"],
                              output_names=names, opset_version=opset,
                              dynamo=opset >= 18 and not is_torchscript(module),
                              external_data=False, verbose=False)
    except Exception as exc:
        cause = _root_cause(exc)
        if "prim::DictConstruct" in cause:  # TorchScript's exporter has no dict outputs
            cause += ("; a TorchScript model cannot return a dict to ONNX: return a tuple, or "
                      "give the nn.Module itself (its dict keys name the outputs)")
        raise ModelSourceError(f"torch.onnx.export failed for {spec}: {cause}") from None
    model = _slim_checked(out, example.numpy())
    got = _run_all(out, example.numpy())
    diff = max(float(np.max(np.abs(a - b.numpy()), initial=0.0)) for a, b in zip(got, expected))
    if state_hash is None:
        state_hash = _state_hash(module)
    return _describe(out, "pytorch", spec, state_hash, diff, model, opset)


def _torch_outputs(result, spec: str) -> tuple[list, list[str]]:
    """The module's output tensors, flattened as torch.onnx.export flattens them, and their
    names: a dict's keys, else output, output_1, ... A dict output used to stop export with
    a traceback ('dict' object has no attribute 'numpy'), and a tuple's outputs after the first
    were named after a torch op ('view') and never compared with torch."""
    import torch
    from torch.utils import _pytree

    leaves = _pytree.tree_leaves(result)
    if not leaves or not all(isinstance(t, torch.Tensor) for t in leaves):
        kinds = sorted({type(t).__name__ for t in leaves}) or ["nothing"]
        raise ModelSourceError(f"{spec} returns {', '.join(kinds)}; edge-opt needs the model to "
                               "return tensors (one, or a tuple, list or dict of them)")
    if (isinstance(result, dict) and len(result) == len(leaves)
            and all(isinstance(k, str) and k for k in result)):
        return leaves, list(result)
    return leaves, ["output"] + [f"output_{i}" for i in range(1, len(leaves))]


def _root_cause(exc: BaseException) -> str:
    """The first line of the innermost cause, without terminal colours: torch.onnx's own first
    line is a generic "Failed to export the model with torch.export ... Next steps:"."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def is_torchscript(module) -> bool:
    """A compiled TorchScript module: torch.onnx exports it without torch.export, and
    litert-torch (torch.export) cannot take it, so TFLite converts its ONNX export instead."""
    import torch

    return isinstance(module, torch.jit.ScriptModule)


def is_traced_graph(module) -> bool:
    """TorchScript or a torch.export program's module: their layers are graph ops, not the
    nn.Conv2d/nn.Linear modules torch-pruning rewrites (it found 'nothing to prune')."""
    return is_torchscript(module) or getattr(module, "from_torch_export", False)


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    return _run_all(path, x)[0]


def _run_all(path: Path, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def _state_hash(module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _slim_checked(path: Path, example: np.ndarray):
    """Simplify with onnxslim in place, keeping the result only if its outputs still match.

    onnxslim has been seen to fold the TorchScript exporter's reversed-pad Slice wrongly (max abs
    error 3.0 on EfficientNet-Lite0), so every simplification is verified before it is kept.
    """
    import onnx
    import onnxslim

    original = onnx.load(str(path))
    try:
        with quiet():
            slim = onnxslim.slim(original)
    except Exception:  # a model onnxslim cannot handle is still a valid model
        return original
    before = _run_all(path, example)
    slim_path = path.with_suffix(".slim.onnx")
    onnx.save(slim, str(slim_path))
    after = _run_all(slim_path, example)
    if len(after) == len(before) and all(_close(a, b) for a, b in zip(after, before)):
        slim_path.replace(path)
        return slim
    slim_path.unlink()
    return original


def _close(after: np.ndarray, before: np.ndarray) -> bool:
    """Within 1e-4 of the output's magnitude (at least 1): every output, not only the first."""
    scale = max(float(np.max(np.abs(before), initial=0.0)), 1.0)
    return after.shape == before.shape and (
        float(np.max(np.abs(after - before), initial=0.0)) <= 1e-4 * scale)


def _describe(path: Path, kind: str, spec: str, digest: str, diff: float | None,
              model, opset: int | None) -> SourceModel:
    init = {t.name for t in model.graph.initializer}
    inp = next(i for i in model.graph.input if i.name not in init)

    def dims(value_info) -> tuple:
        return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                     for d in value_info.type.tensor_type.shape.dim)

    return SourceModel(
        onnx_path=path,
        kind=kind,
        spec=spec,
        sha256=digest,
        input_name=inp.name,
        input_shape=dims(inp),
        output_names=tuple(o.name for o in model.graph.output),
        output_shapes=tuple(dims(o) for o in model.graph.output),
        export_max_abs_diff=diff,
        opset=opset,
        metadata={p.key: p.value for p in model.metadata_props},
    )
