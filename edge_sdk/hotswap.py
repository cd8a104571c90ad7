"""`SwappableModel`: a Model the Pipeline runs as usual, whose model can be swapped between
frames without stopping the camera.

The Pipeline calls preprocess -> backend.infer -> decode for each frame on its thread; the
model is picked at `preprocess` (the start of a frame) and kept for that frame, so a swap from
another thread takes effect at the next frame and a frame never mixes two models.

During a trial (`try_model`) frames go to the candidate while a `HealthGate` watches it; a
frame on which it raises or gives non-finite outputs is served by the previous model instead,
so the results stream never carries an error or a NaN from a model being tried.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque

import numpy as np

from edge_sdk.health_gate import HealthGate
from edge_sdk.model import Model


class _Backend:
    """What the Pipeline sees as `model.backend`: routes infer to the frame's model."""

    def __init__(self, owner: SwappableModel) -> None:
        self._owner = owner

    @property
    def name(self) -> str:
        return self._owner.current.backend.name

    @property
    def missing_providers(self):
        return getattr(self._owner.current.backend, "missing_providers", None)

    def infer(self, feeds):
        return self._owner._infer(feeds)


class SwappableModel(Model):
    """A Model proxy (see module docstring); `current` is the model that owns new frames."""

    preprocess_ahead = False  # preprocess picks the frame's model: it runs on the frame's turn

    def __init__(self, model: Model) -> None:  # no super().__init__: everything delegates
        self._lock = threading.Lock()
        self.current = model
        self._fallback: Model | None = None
        self._gate: HealthGate | None = None
        self._frame = _Frame(model, None, None, None)  # the frame in flight (inference thread)
        self._times: deque[float] = deque(maxlen=100)  # ms per frame of `current`
        self.backend = _Backend(self)

    # Model's attributes, from the current model
    @property
    def manifest(self):
        return self.current.manifest

    @property
    def folder(self):
        return self.current.folder

    @property
    def preprocessors(self):
        return self.current.preprocessors

    @property
    def decoder(self):
        return self.current.decoder

    # -- swapping ----------------------------------------------------------------------------

    def baseline_ms(self) -> float | None:
        """Median time per frame (preprocess + infer) of the current model, recently."""
        with self._lock:
            return statistics.median(self._times) if len(self._times) >= 5 else None

    def try_model(self, candidate: Model, gate: HealthGate) -> None:
        """From the next frame on, run `candidate` under `gate`, the current one as fallback."""
        with self._lock:
            self._fallback, self._gate = self.current, gate
            self.current = candidate
            self._times.clear()

    def settle(self, model: Model) -> None:
        """End a trial: from the next frame on run `model` alone (the candidate or the old)."""
        with self._lock:
            self.current, self._fallback, self._gate = model, None, None
            self._times.clear()

    # -- the frame path (inference thread) ---------------------------------------------------

    def preprocess(self, frame_bgr):
        # the frame's model, fallback and gate are read together, once: a `settle` from the
        # agent's thread mid-frame must not leave this frame without its fallback or gate
        with self._lock:
            frame = _Frame(self.current, self._fallback, self._gate, frame_bgr)
        self._frame = frame
        try:
            feeds, frame.transform = frame.model.preprocess(frame_bgr)
        except Exception as exc:
            if frame.gate is None:
                raise
            frame.gate.error(exc)
            feeds = self._to_fallback(frame)
        return feeds, frame

    def _infer(self, feeds):
        frame = self._frame  # infer gets only feeds; preprocess of this frame set it
        model, gate = frame.model, frame.gate
        try:
            outputs = model.backend.infer(feeds)
        except Exception as exc:
            if gate is None:
                raise
            gate.error(exc)
            return self._fallback_outputs(frame)
        elapsed = (time.perf_counter() - frame.t0) * 1e3
        if gate is not None:
            for spec, out in zip(model.manifest.outputs, outputs):
                array = np.asarray(out)
                if array.dtype.kind == "f" and not np.isfinite(array).all():
                    gate.non_finite(spec.name)
                    return self._fallback_outputs(frame)
            gate.frame(elapsed)
        with self._lock:
            if model is self.current:
                self._times.append(elapsed)
        return outputs

    def decode(self, outputs, transform):
        frame = transform if isinstance(transform, _Frame) else self._frame
        model, gate = frame.model, frame.gate
        try:
            return model.decode(outputs, frame.transform)  # the frame's model's own transform
        except Exception as exc:
            if gate is None:
                raise
            gate.error(exc, counted=True)  # its inference counted the frame already
            feeds = self._to_fallback(frame)
            return frame.model.decode(frame.model.backend.infer(feeds), frame.transform)

    def infer(self, feeds):
        return self.current.infer(feeds)

    def predict(self, image):
        return self.current.predict(image)

    @staticmethod
    def _to_fallback(frame: _Frame):
        """Hand the frame to its own fallback (the one captured with it), ungated."""
        frame.model, frame.fallback, frame.gate = frame.fallback, None, None
        feeds, frame.transform = frame.model.preprocess(frame.image)
        return feeds

    def _fallback_outputs(self, frame: _Frame):
        feeds = self._to_fallback(frame)  # first: it makes the fallback the frame's model
        return frame.model.backend.infer(feeds)


class _Frame:
    """One frame's model, fallback and gate, fixed at its preprocess; passed as its transform."""

    __slots__ = ("model", "fallback", "gate", "image", "transform", "t0")

    def __init__(self, model: Model, fallback: Model | None, gate: HealthGate | None,
                 image) -> None:
        self.model, self.fallback, self.gate, self.image = model, fallback, gate, image
        self.transform = None
        self.t0 = time.perf_counter()
