"""Constant-velocity Kalman filter on boxes, as used by SORT, DeepSORT and ByteTrack.

State (8): cx, cy, a, h, vcx, vcy, va, vh -- box centre, aspect ratio w/h, height, and their
per-frame velocities. Measurement (4): cx, cy, a, h. Noise scales with the box height, so a
large (near) box may move more pixels per frame than a small (far) one. All methods work on a
batch of N tracks at once: means (N, 8), covariances (N, 8, 8).
"""

from __future__ import annotations

import numpy as np

# How uncertain position and velocity are, as a fraction of box height (ByteTrack's values).
STD_WEIGHT_POSITION = 1.0 / 20
STD_WEIGHT_VELOCITY = 1.0 / 160


# Trackers call these on a handful of boxes per frame, where numpy's per-call overhead is the
# cost: columns are written into one preallocated array rather than np.stack-ed.


def xyxy_to_cxcyah(xyxy: np.ndarray) -> np.ndarray:
    w = xyxy[:, 2] - xyxy[:, 0]
    h = xyxy[:, 3] - xyxy[:, 1]
    out = np.empty((len(xyxy), 4))
    out[:, 0] = xyxy[:, 0] + w / 2
    out[:, 1] = xyxy[:, 1] + h / 2
    out[:, 2] = w / np.maximum(h, 1e-6)
    out[:, 3] = h
    return out


def cxcyah_to_xyxy(state: np.ndarray) -> np.ndarray:
    """Box of each state (or measurement): only the first four columns are read."""
    half_w = state[:, 2] * state[:, 3] / 2
    half_h = state[:, 3] / 2
    out = np.empty((len(state), 4), np.result_type(state.dtype, np.float32))
    out[:, 0] = state[:, 0] - half_w
    out[:, 1] = state[:, 1] - half_h
    out[:, 2] = state[:, 0] + half_w
    out[:, 3] = state[:, 1] + half_h
    return out


def _diag(std: np.ndarray) -> np.ndarray:
    """(N, k) standard deviations -> (N, k, k) diagonal covariances."""
    n, k = std.shape
    out = np.zeros((n, k, k))
    out.reshape(n, k * k)[:, :: k + 1] = std**2  # the diagonal of each k x k block
    return out


class KalmanFilter:
    def __init__(self) -> None:
        # Transition F: one step is one frame, so position += velocity, velocity unchanged.
        self.transition = np.eye(8)
        self.transition[:4, 4:] = np.eye(4)
        # Measurement H: a detection observes the position half of the state.
        self.measurement = np.eye(4, 8)

    def initiate(self, measurements: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """New tracks from (N, 4) cxcyah: zero velocity, velocity very uncertain."""
        n = len(measurements)
        mean = np.concatenate([measurements, np.zeros((n, 4))], axis=1)
        h = measurements[:, 3]
        pos, vel = STD_WEIGHT_POSITION * h, STD_WEIGHT_VELOCITY * h
        std = np.stack(
            [2 * pos, 2 * pos, np.full(n, 1e-2), 2 * pos,
             10 * vel, 10 * vel, np.full(n, 1e-5), 10 * vel],
            axis=1,
        )  # fmt: skip
        return mean, _diag(std)

    def predict(self, mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One frame ahead: x = F x, P = F P F^T + Q, with process noise Q scaled by height."""
        n, h = len(mean), mean[:, 3]
        pos, vel = STD_WEIGHT_POSITION * h, STD_WEIGHT_VELOCITY * h
        std = np.stack([pos, pos, np.full(n, 1e-2), pos, vel, vel, np.full(n, 1e-5), vel], axis=1)
        process_noise = _diag(std)
        f = self.transition
        return mean @ f.T, f @ cov @ f.T + process_noise

    def predict_tracks(self, tracks: list, frozen_height: list[bool] | None = None) -> np.ndarray:
        """Predict every track (objects with `.mean`, `.cov`) one frame ahead, in one batch;
        `frozen_height` marks tracks whose height velocity is zeroed first (lost boxes are not
        seen to shrink or grow, as ByteTrack does). Returns the (N, 8) predicted means."""
        if not tracks:
            return np.zeros((0, 8))
        mean = np.stack([t.mean for t in tracks])
        cov = np.stack([t.cov for t in tracks])
        if frozen_height is not None:
            mean[frozen_height, 7] = 0.0
        mean, cov = self.predict(mean, cov)
        for track, m, c in zip(tracks, mean, cov, strict=True):
            track.mean, track.cov = m, c
        return mean

    def project(self, mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """State -> measurement space: z = H x, S = H P H^T + R, with detector noise R."""
        n, h = len(mean), mean[:, 3]
        pos = STD_WEIGHT_POSITION * h
        detector_noise = _diag(np.stack([pos, pos, np.full(n, 1e-1), pos], axis=1))
        m = self.measurement
        return mean @ m.T, m @ cov @ m.T + detector_noise

    def update(
        self, mean: np.ndarray, cov: np.ndarray, measurements: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Correct with (N, 4) cxcyah detections: x += K (z - H x), P -= K S K^T."""
        projected_mean, innovation_cov = self.project(mean, cov)
        # Kalman gain K = P H^T S^-1; S and P are symmetric, so K^T = S^-1 (H P).
        gain = np.linalg.solve(innovation_cov, self.measurement @ cov).transpose(0, 2, 1)
        innovation = measurements - projected_mean
        new_mean = mean + (gain @ innovation[:, :, None])[:, :, 0]
        new_cov = cov - gain @ innovation_cov @ gain.transpose(0, 2, 1)
        return new_mean, new_cov
