"""The SAM prompt encoder's point list, shared by the PyTorch model (``sam``) and the ONNX decoder.

Both ``sam.SamModel`` and ``onnx_decoder`` import this module; neither imports the other for it, so the
ONNX path adds no import cycle. ``LowResDecoder`` is what ``SamModel`` expects of an attached decoder
runtime (``onnx_decoder.OnnxDecoder`` is one), named here so that ``sam`` need not import ``onnx_decoder``.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class LowResDecoder(Protocol):
    """A runtime for SAM's prompt encoder + mask decoder (``onnx_decoder.OnnxDecoder``)."""

    def run(
        self, features: np.ndarray, coords: np.ndarray, labels: np.ndarray, mask_input: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(1, 4, 256, 256) float32 low-res logits and (1, 4) float32 IoU of all four mask tokens.

        Args:
            features: (1, 256, 64, 64) float32 image embedding.
            coords: (N, 2) float x, y in the model's 1024 input frame, from ``sam_point_inputs``.
            labels: (N,) float point labels, from ``sam_point_inputs``.
            mask_input: (1, 256, 256) float previous low-res logits, or None.
        """
        ...


def sam_point_inputs(
    coords: np.ndarray | None, labels: np.ndarray | None, box: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Points and box (1024 frame) → the decoder graph's point list, in ``PromptEncoder``'s order.

    The official prompt encoder embeds the points, then a padding point only when there is no box,
    then the box's two corners (labels 2 and 3): the same sequence gives the same sparse embeddings.

    Args:
        coords: (N, 2) x, y in the model's 1024 input frame, or None.
        labels: (N,) 1 positive / 0 negative, or None.
        box: (4,) x0, y0, x1, y1 in the 1024 frame, or None.

    Returns:
        ((M, 2) float64 coords, (M,) float64 labels): 1 / 0 points, -1 padding point, 2 / 3 box corners.
    """
    pts = [np.zeros((0, 2))] if coords is None else [np.asarray(coords, dtype=np.float64).reshape(-1, 2)]
    lbl = [np.zeros((0,))] if labels is None else [np.asarray(labels, dtype=np.float64).reshape(-1)]
    if box is None:
        pts.append(np.zeros((1, 2)))
        lbl.append(np.array([-1.0]))
    else:
        pts.append(np.asarray(box, dtype=np.float64).reshape(2, 2))
        lbl.append(np.array([2.0, 3.0]))
    return np.concatenate(pts), np.concatenate(lbl)
