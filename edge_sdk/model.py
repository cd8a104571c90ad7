"""A loaded bundle: `edge_sdk.load(folder)` -> Model with `predict()` and `infer()`."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from edge_sdk.backends import Backend, create_backend
from edge_sdk.decoders import Decoder, build_decoder
from edge_sdk.decoders.code import prepare as prepare_decoder
from edge_sdk.errors import BundleError, EdgeError, InputError, ManifestError
from edge_sdk.images import ImageReadError, load_image
from edge_sdk.manifest import Manifest, RuntimeSpec
from edge_sdk.preprocess import FrameTransform, Preprocessor
from edge_sdk.results import Classification, Detections
from edge_sdk.sources.capture import VideoFrame

Result = Classification | Detections


class Model:
    """Preprocess, infer and decode exactly as the bundle's manifest says."""

    # `preprocess` may run in another thread, ahead of the frame being inferred (the pipeline's
    # capture thread does so). False for a model whose preprocess starts a frame's state.
    preprocess_ahead = True

    def spare_core(self, calls: int = 1) -> bool:
        """Whether `calls` concurrent inferences on this model's threads leave a core of this
        process free. Preprocessing ahead in another thread pays only then: on cores the
        model's threads fill, it preempts one of them and the others wait for it at the end
        of each parallel section. Measured on 2 cores (`benchmarks/bench_pipeline.py` and an
        interleaved A/B, 5 runs): model on both, -6 % to +5 % (as large as the noise); model
        on one, +13 % to +28 % for the int8 classifier, -2 % to +7 % for the SSDLite
        detector (whose preprocessing is a smaller share of its frame)."""
        return self.manifest.runtime.threads * calls < usable_cores()

    def __init__(self, folder: Path, manifest: Manifest, backend: Backend) -> None:
        self.folder = folder
        self.manifest = manifest
        self.backend = backend
        self.preprocessors = [Preprocessor(spec) for spec in manifest.inputs]
        self.decoder: Decoder = build_decoder(
            manifest.task.decoder, manifest.task.params, manifest.labels
        )
        if getattr(self.decoder, "task", manifest.task.type) != manifest.task.type:
            raise ManifestError(
                f"task.type is {manifest.task.type!r} but decoder {manifest.task.decoder!r} "
                f"decodes {self.decoder.task!r} outputs; re-export the bundle"
            )

    @property
    def labels(self) -> tuple[str, ...]:
        return self.manifest.labels

    @property
    def input_spec(self):
        return self.manifest.inputs[0]

    def preprocess(self, frame_bgr: np.ndarray) -> tuple[dict[str, np.ndarray], FrameTransform]:
        check_frame(frame_bgr)
        tensor, transform = self.preprocessors[0](frame_bgr)
        return {self.manifest.inputs[0].name: tensor}, transform

    def preprocess_frame(self, frame: np.ndarray | VideoFrame
                         ) -> tuple[dict[str, np.ndarray], FrameTransform, float]:
        """Feeds, transform and preprocessing ms of a frame: what the capture thread or a
        feeder prepared ahead (`VideoFrame.prepared`), else preprocessed now."""
        if isinstance(frame, VideoFrame) and frame.prepared is not None and \
                self.preprocess_ahead:
            feeds, transform = frame.prepared
            return feeds, transform, frame.prepare_ms
        t0 = time.perf_counter()
        feeds, transform = self.preprocess(frame.image if isinstance(frame, VideoFrame) else frame)
        return feeds, transform, (time.perf_counter() - t0) * 1e3

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the bare model on ready tensors; returns outputs by name."""
        if not isinstance(feeds, dict):
            raise InputError(f"infer takes a dict of input name -> array (what preprocess "
                             f"returns), got {type(feeds).__name__}")
        for spec in self.manifest.inputs:
            if spec.name not in feeds:
                raise InputError(f"missing input {spec.name!r}; the model takes "
                                 f"{[s.name for s in self.manifest.inputs]}")
            array = feeds[spec.name]
            if not isinstance(array, np.ndarray):
                raise InputError(f"input {spec.name!r} must be a numpy array, got "
                                 f"{type(array).__name__}")
            if tuple(array.shape) != tuple(spec.shape) or array.dtype != np.dtype(spec.dtype):
                raise InputError(
                    f"input {spec.name!r} must be {spec.dtype} {list(spec.shape)}, "
                    f"got {array.dtype} {list(array.shape)}"
                )
        outputs = self.backend.infer(feeds)
        return {spec.name: out for spec, out in zip(self.manifest.outputs, outputs)}

    def decode(self, outputs: list[np.ndarray], transform: FrameTransform) -> Result:
        return self.decoder(outputs, transform)

    def predict(self, image: np.ndarray | str | Path) -> Result:
        """Preprocess + infer + decode one BGR frame (or an image file path)."""
        frame = _read_image(image) if isinstance(image, (str, Path)) else image
        feeds, transform = self.preprocess(frame)
        return self.decode(self.backend.infer(feeds), transform)


CACHE_ENV = "EDGE_SDK_CACHE_DIR"


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


MAX_LOAD_THREADS = 1024  # as the manifest schema's runtime.threads: a runtime takes no more


def load(bundle: str | Path, *, threads: int | None = None, verify: bool = True,
         trust_code: bool = False, trust: str | Path | None = None,
         cache_dir: str | Path | None = None,
         on_load: Callable[[Manifest], None] | None = None) -> Model:
    """Load a bundle folder; the backend is chosen from its manifest.

    `threads` overrides the profile's thread count (e.g. to compare settings); `verify`
    checks every file's sha256 against the manifest, refusing a mismatch. A bundle that
    carries its decoder as Python code is refused unless `trust_code` (the code runs in this
    process with its rights; its hash is checked first even without `verify`). With `trust` (a
    public key file from `edge-opt keygen`), an unsigned bundle or one signed by another key
    is refused. `cache_dir` (default: $EDGE_SDK_CACHE_DIR, else none) is this device's folder
    for compiled models, which cuts repeated OpenVINO start-up, and for TensorRT's engines
    (which otherwise go to ~/.cache/edge-sdk); it comes from the device's configuration, never
    from a bundle. `on_load` is called with the manifest as run (its thread count settled)
    just before the runtime loads the model, the slow part (an OpenVINO compile or a TensorRT
    engine build takes minutes on a device), so a CLI can say what it waits for.
    """
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool)
                                or not 1 <= threads <= MAX_LOAD_THREADS):
        huge = isinstance(threads, int) and threads.bit_length() > 64  # repr may refuse it
        shown = "a huge integer" if huge else repr(threads)
        raise EdgeError(f"threads must be a whole number from 1 to {MAX_LOAD_THREADS} (or None "
                        f"for the bundle's profile), got {shown}")
    folder = Path(bundle)
    if trust is not None:
        from edge_sdk.trust import verify_bundle

        verify_bundle(folder, trust)
    manifest = Manifest.read(folder, verify=verify)
    prepare_decoder(folder, manifest, trust_code)
    model_path = manifest.path_of(folder, "model")
    if not _utf8(str(model_path)):
        raise BundleError(f"the bundle's path {str(model_path)!r} is not valid UTF-8, "
                          "which the runtimes cannot open: rename the folder (or a folder "
                          "above it)")
    if manifest.format == "openvino":
        _check_openvino_weights(manifest, folder, model_path)
    if threads is None:  # the profile's count, but never more than this machine's cores
        threads = min(manifest.runtime.threads, os.cpu_count() or manifest.runtime.threads)
    manifest = replace(manifest, runtime=replace(manifest.runtime, threads=threads))
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV) or None
    if on_load is not None:
        on_load(manifest)
    backend = create_backend(manifest, model_path,
                             None if cache_dir is None else Path(cache_dir))
    return Model(folder, manifest, backend)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8 decode to lone surrogates
        return False
    return True


def _check_openvino_weights(manifest: Manifest, folder: Path, model_path: Path) -> None:
    """OpenVINO reads `model.bin` next to `model.xml` by itself: it must be a bundle file the
    manifest names (so the path rule and the hash cover it)."""
    weights = model_path.with_suffix(".bin").resolve()
    listed = {manifest.path_of(folder, key) for key in manifest.files if key != "model"}
    if weights not in listed:
        raise BundleError(f"an OpenVINO bundle must name its weights file "
                          f"({weights.name}, next to {model_path.name}) in the manifest's files; "
                          "re-export the bundle")


def check_frame(frame: object) -> None:
    """A frame is what OpenCV gives: uint8, (H, W, 3) BGR, (H, W) grey or (H, W, 4) BGRA.
    Other arrays would fail inside OpenCV, or worse pass with wrong numbers (a 16-bit or float
    frame is not on the 0-255 scale the bundle's normalisation expects)."""
    if not isinstance(frame, np.ndarray):
        raise InputError(f"expected an image: a numpy array (H, W, 3) BGR uint8, or a file path; "
                         f"got {type(frame).__name__}")
    ok_shape = frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] in (1, 3, 4))
    if not ok_shape or frame.shape[0] < 1 or frame.shape[1] < 1:
        raise InputError(f"expected an image of shape (H, W, 3) BGR, (H, W) grey or (H, W, 4), "
                         f"got shape {frame.shape}")
    if frame.dtype != np.uint8:
        raise InputError(f"expected a uint8 image (0-255, as cv2.imread gives), got {frame.dtype}"
                         "; convert it, e.g. cv2.convertScaleAbs(frame, alpha=255 / frame.max())")


def _read_image(path: str | Path) -> np.ndarray:
    try:
        return load_image(path)
    except ImageReadError as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None


__all__ = ["Model", "load", "RuntimeSpec"]
