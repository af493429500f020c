"""The weight-free engine: OpenCV GrabCut seeded by the prompt, so every feature runs without a checkpoint.

How a prompt becomes a mask (all numbers measured with ``bench/classical_quality.py``):

1. ``encode`` keeps a working copy of the image (longest side at most ``ENCODE_MAX_SIDE``); nothing else.
2. ``decode`` picks the *object rectangle*: the box if there is one; else the previous answer's box
   grown by ``PRIOR_GROWTH`` (refinement); else, for points alone, a window found by probing
   windows of growing size around the points (``_find_window``).
3. It crops that rectangle plus a background margin and scales the crop so its longest side is at
   most ``CROP_SIDE``: small objects keep their detail, large ones cost no more time.
4. GrabCut's labels: the margin is background; inside the rectangle is probable foreground (or
   the previous mask, as probable foreground / background); positive points are sure-foreground
   disks; negative points are sure-background disks plus the similar-coloured region around them.
5. Post-processing keeps the connected components that hold positive points (or the largest one for
   a box), fills small holes, and scales the mask back to the original image (clipped to the box).

Everything is a pure function of (embedding, prompt): nothing is kept between calls, and OpenCV's
RNG (thread-local, used by GrabCut's k-means) is seeded in every call, so answers are deterministic
and one model serves many threads.

Modules: ``params`` (tuning constants), ``seeds`` (prompt → working-image seeds), ``window`` (step 2:
where to cut), ``crop`` (step 3), ``grabcut`` (step 4), ``cleanup`` (step 5), ``score``, ``logits``
(SAM's low-res frame).
"""

from __future__ import annotations

import cv2
import numpy as np

from label_anything.engine.classical.cleanup import resize_mask
from label_anything.engine.classical.logits import low_res_logits, prior_mask
from label_anything.engine.classical.params import ENCODE_MAX_SIDE, RNG_SEED
from label_anything.engine.classical.seeds import prompt_to_seeds
from label_anything.engine.classical.window import segment
from label_anything.engine.prompts import Prompt
from label_anything.engine.types import Embedding, ModelInfo, Segmentation
from label_anything.errors import ImageError, LabelAnythingError, PromptError

__all__ = ["ClassicalModel", "low_res_logits", "prior_mask"]


class ClassicalModel:
    """GrabCut behind the ``SegmentationModel`` protocol: no weights, no GPU, ~0.1 s a box prompt.

    Example:
        >>> img = np.zeros((60, 80, 3), np.uint8); img[20:40, 30:50] = 255
        >>> model = ClassicalModel()
        >>> seg = model.decode(model.encode(img, "digest"), Prompt.from_lists(box=[25, 15, 55, 45]))
        >>> seg.masks.shape, int(seg.masks[0].sum()), seg.low_res_logits.shape
        ((1, 60, 80), 400, (1, 256, 256))
    """

    def __init__(self) -> None:
        self.info = ModelInfo(name="classical", config="grabcut", weights_digest="", device="cpu")

    def encode(self, image: np.ndarray, image_digest: str) -> Embedding:
        """Keep a working copy of the image: there is nothing heavy to compute.

        Args:
            image: (H, W, 3) uint8 RGB; (H, W) or (H, W, 1) grey is accepted too.
            image_digest: the image's content digest, kept for the cache key.

        Returns:
            Embedding with ``arrays["image"]`` (h, w, 3) uint8 (read-only), longest side at most
            ``ENCODE_MAX_SIDE``; ``input_size`` is (h, w).
        """
        rgb = _as_rgb(image)
        height, width = rgb.shape[:2]
        scale = min(1.0, ENCODE_MAX_SIDE / max(height, width))
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            # INTER_AREA averages: no aliasing on textures, which GrabCut's colour models would learn.
            work = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        else:
            work = rgb.copy()  # the caller may reuse its buffer; an embedding must not change
        work.setflags(write=False)
        return Embedding(
            model_id=self.info.model_id,
            image_digest=image_digest,
            original_size=(height, width),
            input_size=(work.shape[0], work.shape[1]),
            arrays={"image": work},
        )

    def decode(
        self, embedding: Embedding, prompt: Prompt, *, multimask: bool | None = None, keep: str = "best"
    ) -> Segmentation:
        """Segment the object the prompt points at.

        Args:
            embedding: from this model's ``encode``.
            prompt: points (positive / negative), a box, and/or a previous answer's ``low_res_logits``.
            multimask: ignored: GrabCut has one answer, so there is always exactly one mask.
            keep: "best" or "all"; both give the one mask.

        Returns:
            Segmentation: masks (1, H, W) bool at the original size; scores (1,) float32, the
            heuristic of ``score_cut``; low_res_logits (1, 256, 256) float32 in SAM's padded frame.
        """
        del multimask  # one answer only; the argument exists for the protocol
        if keep not in ("best", "all"):
            raise PromptError(f'keep must be "best" or "all", got {keep!r}')
        image = embedding.arrays.get("image")
        if embedding.model_id != self.info.model_id or image is None:
            raise LabelAnythingError(
                f"this embedding was computed by {embedding.model_id}, not {self.info.model_id}: "
                "encode the image again with the classical model"
            )
        original_size = embedding.original_size
        seeds = prompt_to_seeds(prompt, original_size, image.shape[:2])
        cv2.setRNGSeed(RNG_SEED)  # OpenCV's RNG is per thread: this seeds this call's k-means only
        work_mask, score = segment(image, seeds)
        mask = resize_mask(work_mask, original_size)
        if prompt.box is not None:
            mask = _clip_to_box(mask, prompt.box)
        return Segmentation(
            masks=mask[None],
            scores=np.array([score], np.float32),
            low_res_logits=low_res_logits(mask)[None],
        )


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 from RGB or grey input; anything else is an ImageError."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ImageError(f"the classical engine takes uint8 images, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(f"expected an (H, W, 3) RGB image, got shape {array.shape}")
    return np.ascontiguousarray(array)


def _clip_to_box(mask: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Zero an (H, W) bool mask outside the pixels a (4,) x0, y0, x1, y1 box touches."""
    height, width = mask.shape
    x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x1, y1 = min(width, int(np.ceil(box[2]))), min(height, int(np.ceil(box[3])))
    clipped = np.zeros_like(mask)
    clipped[y0:y1, x0:x1] = mask[y0:y1, x0:x1]
    return clipped
