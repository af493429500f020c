"""The heuristic confidence of a classical mask, from GrabCut's own colour models."""

from __future__ import annotations

import cv2
import numpy as np

from label_anything.engine.classical.grabcut import Cut
from label_anything.engine.classical.params import SCORE_PIXELS


def score_cut(cut: Cut) -> float:
    """How clearly colour alone backs the mask: a heuristic confidence in [0, 1].

    GrabCut's two colour models (Gaussian mixtures) give every pixel it was free to decide a
    probability of being foreground. The score is the mean of that probability inside the mask plus
    the mean probability of background outside it, minus one: 0 when colour cannot tell the object
    from its surroundings (chance), 1 when every undecided pixel's colour clearly belongs to its
    side. It is not an IoU estimate, but ranks masks like one: Spearman correlation with IoU on the
    bench about 0.8 for boxes and clicks. An empty mask scores 0; a mask decided by the prompt alone
    (no pixel left to decide) scores 1.
    """
    if cut.models is None or not cut.frame_mask.any():
        return 0.0
    undecided = (cut.labels == cv2.GC_PR_FGD) | (cut.labels == cv2.GC_PR_BGD)
    if not undecided.any():
        return 1.0
    # Every n-th undecided pixel: 10k pixels estimate two means well enough, at a fifth of the cost.
    step = max(1, int(np.count_nonzero(undecided)) // SCORE_PIXELS)
    pixels = cut.patch[:, :, ::-1][undecided][::step].astype(np.float64)  # the models were fitted on BGR
    llr = _gmm_log_density(pixels, cut.models[1]) - _gmm_log_density(pixels, cut.models[0])
    p_fg = 1.0 / (1.0 + np.exp(-np.clip(llr, -30.0, 30.0)))
    inside = cut.frame_mask[undecided][::step]
    agree_in = float(p_fg[inside].mean()) if inside.any() else 0.5
    agree_out = float(1.0 - p_fg[~inside].mean()) if (~inside).any() else 0.5
    return float(np.clip(agree_in + agree_out - 1.0, 0.0, 1.0))


def _gmm_log_density(pixels: np.ndarray, model: np.ndarray) -> np.ndarray:
    """Log density of (N, 3) float64 colours under one of GrabCut's (1, 65) float64 colour models.

    OpenCV's layout: 5 component weights, then 5 means (3 each), then 5 covariances (3 x 3 each).
    Returns (N,) float64.
    """
    flat = model.reshape(-1)
    weights, means, covs = flat[:5], flat[5:20].reshape(5, 3), flat[20:65].reshape(5, 3, 3)
    per_component = np.full((len(pixels), 5), -np.inf)
    for k in np.flatnonzero(weights > 0):
        cov = covs[k] + np.eye(3) * 0.01  # a flat colour has a singular covariance; GrabCut adds this ridge too
        diff = pixels - means[k]
        mahalanobis = np.einsum("ni,ni->n", diff @ np.linalg.inv(cov), diff)
        _, logdet = np.linalg.slogdet(cov)
        per_component[:, k] = np.log(weights[k]) - 0.5 * (mahalanobis + logdet + 3 * np.log(2 * np.pi))
    top = per_component.max(axis=1)
    return top + np.log(np.exp(per_component - top[:, None]).sum(axis=1))
