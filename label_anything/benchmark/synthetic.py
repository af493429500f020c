"""What the benchmark measures on: photo-like scenes, a realistic object's mask and logits, and
random-weight checkpoints of the real architectures (see the package docstring for why)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

RANDOM_WEIGHTS_NOTE = (
    "random-weight checkpoints of the real architectures (official package builders, loaded through "
    "load_model); timing does not depend on weight values"
)
SIZES = ((1024, 768), (4000, 3000))


def scene(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A photo-like RGB test image: smooth gradient, a few filled shapes, mild noise (seed varies it)."""
    import cv2

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([80 + 80 * x / width, 120 + 60 * y / height, 190 - 60 * x / width], axis=-1)
    img = img.astype(np.uint8)
    s = min(width, height)
    cv2.ellipse(img, (width // 2, int(height * 0.45)), (width // 5, height // 4), 15, 0, 360, (200, 80, 40), -1)
    cv2.circle(img, (width // 5, height // 4), s // 8, (30, 160, 60), -1)
    cv2.rectangle(img, (int(width * 0.7), int(height * 0.6)), (int(width * 0.9), int(height * 0.9)), (240, 230, 50), -1)
    noise = rng.integers(0, 12, size=img.shape, dtype=np.uint8)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def object_mask(width: int, height: int) -> np.ndarray:
    """A realistic single-object mask: an ellipse (~15 % of the image) with one hole."""
    import cv2

    mask = np.zeros((height, width), np.uint8)
    cv2.ellipse(mask, (width // 2, int(height * 0.45)), (width // 5, height // 4), 15, 0, 360, 1, -1)
    cv2.circle(mask, (width // 2, int(height * 0.45)), min(width, height) // 20, 0, -1)
    return mask.astype(bool)


def speckle_mask(width: int, height: int, seed: int = 0) -> np.ndarray:
    """The worst shape for polygons: every pixel painted at random (half of them), so tens of thousands of
    one-pixel parts and holes. A brush can paint it; no model answers it."""
    return np.random.default_rng(seed).random((height, width)) < 0.5


def random_checkpoint(family: str, config: str, folder: Path, seed: int = 0) -> Path:
    """A seeded random-weight state dict of the real architecture, built once and reused.

    SAM 2 files are saved as Meta's are (``{"model": state_dict}``), so they load through the same path.
    """
    import torch

    path = folder / f"random-{family}-{config}-{seed}.pth"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(seed)
        if family == "sam2":
            from label_anything.engine.sam2 import build_sam2_network

            torch.save({"model": build_sam2_network(config).state_dict()}, path)
        else:
            from label_anything.engine.sam import ARCHITECTURES

            torch.save(ARCHITECTURES[(family, config)].build().state_dict(), path)
    return path


def load_random_model(family: str, config: str, folder: Path):
    from label_anything.engine import load_model

    return load_model(family, config, random_checkpoint(family, config, folder), device="cpu")


def object_logits(input_size: tuple[int, int], img_size: int = 1024) -> np.ndarray:
    """What a trained SAM decoder gives for ``object_mask``: (1, 256, 256) float32 low-res logits, a
    smooth signed distance (positive inside) over the model's padded square input frame."""
    import cv2

    h, w = input_size
    square = np.zeros((img_size, img_size), np.uint8)
    square[:h, :w] = object_mask(w, h)
    inside = cv2.distanceTransform(square, cv2.DIST_L2, 5)
    outside = cv2.distanceTransform(1 - square, cv2.DIST_L2, 5)
    low = cv2.resize(inside - outside, (256, 256), interpolation=cv2.INTER_AREA) / 4
    return low.astype(np.float32)[None]


class SyntheticMaskModel:
    """Wraps a model: runs its real decoder (full cost), then answers a realistic object mask of the
    same size, so the output stage (RLE, box, polygons) works on a realistic shape (see module doc).

    SAM-family models: the decoder network runs for real, then its logits are swapped for those of a
    realistic object (``object_logits``) and upscaled by the model's own code, so the click pays the
    upscaling a real mask costs. Others: the real decode, then ``object_mask``.
    """

    def __init__(self, model) -> None:
        self.model = model
        self.info = model.info
        self._masks: dict[tuple[int, int], np.ndarray] = {}
        self._logits: dict[tuple[int, int], Any] = {}

    def encode(self, image, image_digest):
        return self.model.encode(image, image_digest)

    def decode(self, embedding, prompt, *, multimask=None, keep="best"):
        import torch

        from label_anything.engine.types import Segmentation

        if hasattr(self.model, "decode_low_res"):
            _, iou = self.model.decode_low_res(embedding, prompt, multimask=multimask, keep=keep)
            size = embedding.input_size
            if size not in self._logits:
                self._logits[size] = torch.from_numpy(object_logits(size))
            logits = self._logits[size].expand(len(iou), -1, -1)
            masks = self.model.masks_from_low_res(logits, embedding)
            return Segmentation(masks=masks, scores=iou.float().numpy(), low_res_logits=logits.numpy())
        seg = self.model.decode(embedding, prompt, multimask=multimask, keep=keep)
        h, w = embedding.original_size
        mask = self._masks.setdefault((h, w), object_mask(w, h))
        masks = np.repeat(mask[None], len(seg.scores), axis=0)
        return Segmentation(masks=masks, scores=seg.scores, low_res_logits=seg.low_res_logits)
