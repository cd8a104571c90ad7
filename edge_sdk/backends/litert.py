"""LiteRT backend: runs a .tflite with ai-edge-litert, or the interpreter the device already has.

Older Raspberry Pi images ship tflite-runtime (built for numpy < 2) and some devices have full
TensorFlow; whichever imports first is used, and `name` says which. The default delegate
(XNNPACK) runs the model with the manifest's thread count. Inputs and outputs are matched to
the manifest by name (the model's signature names, else its tensor names). Integer outputs
are dequantized here with the manifest's (scale, zero point), so decoders always get floats.
An interpreter holds one set of input and output tensors, so `infer` runs one call at a time
(a lock): threads sharing a Model wait for each other instead of reading each other's results.
A model converted with an open batch dimension (`edge-opt export --batch N`) has its input
resized to the frames of each call (re-planned only when the count changes).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import threading
from pathlib import Path

import numpy as np

from edge_sdk.backends.model_io import signature_name
from edge_sdk.errors import BackendError, ModelMismatchError
from edge_sdk.manifest import Manifest
from edge_sdk.native_quiet import native_info_dropped

# (distribution, module holding Interpreter), most preferred first
RUNTIMES = (("ai-edge-litert", "ai_edge_litert.interpreter"),
            ("tflite-runtime", "tflite_runtime.interpreter"),
            ("tensorflow", "tensorflow.lite"))


def find_interpreter() -> tuple[type, str]:
    """The first TFLite interpreter class that imports, and a label like
    "ai-edge-litert 2.3.0". Raises ImportError (naming each failure) when there is none."""
    failures = []
    for dist, module_name in RUNTIMES:
        try:
            if module_name == "tensorflow.lite":  # an attribute of tensorflow, not a module
                interpreter = importlib.import_module("tensorflow").lite.Interpreter
            else:
                interpreter = importlib.import_module(module_name).Interpreter
        except Exception as exc:  # tflite-runtime on numpy 2 fails with ImportError or worse
            first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
            failures.append(f"{dist}: {type(exc).__name__} {first}".strip())
            continue
        return interpreter, f"{dist} {_version(dist, module_name)}"
    raise ImportError("no TFLite interpreter could be imported (" + "; ".join(failures) + ")",
                      name="ai_edge_litert")


class LiteRTBackend:
    def __init__(self, manifest: Manifest, model_path: Path) -> None:
        interpreter_class, label = find_interpreter()
        threads = manifest.runtime.threads
        try:
            with native_info_dropped():  # the delegate's INFO line, under --quiet
                self.interpreter = interpreter_class(model_path=str(model_path),
                                                     num_threads=threads)
                self.interpreter.allocate_tensors()
        except Exception as exc:  # the interpreters raise ValueError/RuntimeError with C++ text
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else repr(exc)
            raise BackendError(f"{label} could not load {model_path.name}: {first}") from None
        self._lock = threading.Lock()
        self.name = f"{label} [XNNPACK, {threads} thread{'s' if threads != 1 else ''}]"
        self.input_names = [s.name for s in manifest.inputs]
        self.output_names = [o.name for o in manifest.outputs]
        inputs, outputs = _details(self.interpreter)
        self._inputs = []
        self._open_batch = True  # every input's batch dimension open (-1): resized per call
        self._batch = 1
        for spec in manifest.inputs:
            d = _match(spec.name, inputs, "input", model_path)
            _check(spec.name, spec.dtype, spec.quant, d, model_path)
            if tuple(spec.shape) != tuple(int(x) for x in d["shape"]):
                raise ModelMismatchError(f"{model_path.name}: input {spec.name!r} is "
                                   f"{list(d['shape'])} but the manifest says {list(spec.shape)}")
            self._inputs.append((spec.name, d["index"]))
            self._open_batch &= int(d.get("shape_signature", d["shape"])[0]) == -1
        self._outputs = []
        for spec in manifest.outputs:
            d = _match(spec.name, outputs, "output", model_path)
            _check(spec.name, spec.dtype, spec.quant, d, model_path)
            self._outputs.append((d["index"], spec.quant))

    def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            with self._lock:
                self._fit_batch(feeds)
                for name, index in self._inputs:
                    self.interpreter.set_tensor(index, feeds[name])
                self.interpreter.invoke()
                raw = [(self.interpreter.get_tensor(index), quant)
                       for index, quant in self._outputs]
        except (ValueError, RuntimeError) as exc:  # e.g. an op this runtime version lacks
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else repr(exc)
            raise BackendError(f"{self.name} failed to run the model: {first}") from None
        return [y if quant is None else (y.astype(np.float32) - quant[1]) * np.float32(quant[0])
                for y, quant in raw]

    def _fit_batch(self, feeds: dict[str, np.ndarray]) -> None:
        """Resize the inputs to this call's frame count (a model with an open batch only; a
        fixed one refuses other shapes in set_tensor)."""
        n = int(feeds[self._inputs[0][0]].shape[0])
        if n == self._batch or not self._open_batch:
            return
        for name, index in self._inputs:
            self.interpreter.resize_tensor_input(index, list(feeds[name].shape))
        self.interpreter.allocate_tensors()
        self._batch = n


def _details(interpreter) -> tuple[dict[str, dict], dict[str, dict]]:
    """Input and output details by name: signature names (when the model has exactly one
    signature on its main graph) and tensor names both work."""
    inputs = {d["name"]: d for d in interpreter.get_input_details()}
    outputs = {d["name"]: d for d in interpreter.get_output_details()}
    try:
        signatures = interpreter.get_signature_list()
        if len(signatures) == 1:
            runner = interpreter.get_signature_runner(next(iter(signatures)))
            sig_in, sig_out = runner.get_input_details(), runner.get_output_details()
            main = {d["index"] for d in [*inputs.values(), *outputs.values()]}
            if {d["index"] for d in [*sig_in.values(), *sig_out.values()]} <= main:
                inputs, outputs = {**inputs, **sig_in}, {**outputs, **sig_out}
    except (AttributeError, ValueError):  # old interpreters without signature runners
        pass
    return inputs, outputs


def _match(name: str, details: dict[str, dict], role: str, path: Path) -> dict:
    """The model's tensor for a manifest name: the same name, else the signature's form of it
    (a manifest names tensors as the source model did, e.g. "output:0")."""
    for candidate in (name, signature_name(name)):
        if candidate in details:
            return details[candidate]
    unique = {d["index"]: d for d in details.values()}
    if len(unique) == 1:  # one tensor: the name cannot be confused
        return next(iter(unique.values()))
    raise ModelMismatchError(f"{path.name} has no {role} named {name!r} (it has "
                       f"{', '.join(sorted(details))}); the manifest does not describe this "
                       "model: re-export the bundle")


def _check(name: str, dtype: str, quant: tuple[float, int] | None, detail: dict,
           path: Path) -> None:
    """The manifest must say what the model really takes and gives, or data is misread."""
    have = np.dtype(detail["dtype"]).name
    if have != dtype:
        raise ModelMismatchError(f"{path.name}: {name!r} is {have} but the manifest says {dtype}; "
                           "re-export the bundle")
    scale, zero_point = detail["quantization"]
    same = (quant is not None and bool(np.isclose(quant[0], scale, rtol=1e-6))
            and quant[1] == zero_point)
    if np.dtype(have).kind in "iu" and scale and not same:
        raise ModelMismatchError(f"{path.name}: {name!r} is quantized with scale {scale:.6g}, zero "
                           f"point {zero_point}, but the manifest says {quant}; re-export the "
                           "bundle")


def _version(dist: str, module_name: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:  # e.g. tensorflow-cpu, or a system package
        root = importlib.import_module(module_name.split(".")[0])
        return str(getattr(root, "__version__", "?"))


find_interpreter()  # fail at import time, so create_backend can say what to install
