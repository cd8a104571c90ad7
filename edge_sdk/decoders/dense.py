"""Dense maps in model-input geometry, warped onto the frame (semantic and instance masks).

A map of h x w pixels covers the whole model input, so one map pixel spans input_w / w input
pixels; `FrameTransform` then says where the input came from in the frame. Without a frame
size (scoring against FP32) maps stay in model-input pixels; without an input size either,
they stay as the model produced them.
"""

from __future__ import annotations

import cv2
import numpy as np

from edge_sdk.preprocess import FrameTransform


def to_frame(maps: np.ndarray, transform: FrameTransform, nearest: bool,
             input_hw: tuple[int, int] | None = None) -> np.ndarray:
    """(..., h, w) maps to (..., H, W) frame pixels; `input_hw` when the transform lacks it.

    Frame pixels outside what the model saw (a centre crop's edges) take the nearest map value.
    """
    h, w = maps.shape[-2:]
    in_h, in_w = (transform.input_h, transform.input_w) if transform.input_w else (
        input_hw or (0, 0))
    if not in_w:
        return maps
    if transform.frame_w and transform.frame_h:
        size, matrix = (transform.frame_w, transform.frame_h), transform.model_to_frame_matrix(
            in_w / w, in_h / h)
    else:
        size = (in_w, in_h)
        matrix = FrameTransform(1.0, 1.0).model_to_frame_matrix(in_w / w, in_h / h)
    if (size == (w, h)) and np.allclose(matrix, [[1, 0, 0], [0, 1, 0]]):
        return maps
    flags = (cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR) | cv2.WARP_INVERSE_MAP
    flat = maps.reshape((-1, h, w)).astype(np.float32)  # class ids too: exact below 2**24
    out = [cv2.warpAffine(m, matrix, size, flags=flags, borderMode=cv2.BORDER_REPLICATE)
           for m in flat]
    stacked = np.stack(out) if out else np.zeros((0, size[1], size[0]), np.float32)
    return stacked.reshape(maps.shape[:-2] + (size[1], size[0])).astype(maps.dtype)
