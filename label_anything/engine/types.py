"""The values that flow through the engine: Embedding in, Segmentation out.

The engine knows nothing of Label Studio. Every function here is pure: a model is read-only after
loading, an Embedding is immutable, and decode() never keeps state between calls, so one model can
serve many threads at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from label_anything.engine.prompts import Prompt


@dataclass(frozen=True, eq=False)
class Embedding:
    """What the heavy image encoder computed for one image, enough to answer any prompt on it.

    Attributes:
        model_id: the model (family, config and weights digest) that computed it; decode() refuses
            an embedding from another model.
        image_digest: SHA-256 of the decoded RGB pixels and their shape (see ``image_digest()``).
        original_size: (H, W) of the image, after EXIF rotation.
        input_size: (h, w) of the image after the model's resize (longest side to 1024 for SAM).
        arrays: named CPU arrays. SAM family: ``features`` (1, 256, 64, 64); HQ-SAM also
            ``hq_features`` (1, 32, 256, 256). Classical: ``image`` (H, W, 3) uint8.
    """

    model_id: str
    image_digest: str
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays (what the cache budgets)."""
        return sum(int(a.nbytes) for a in self.arrays.values())


@dataclass(frozen=True, eq=False)
class Segmentation:
    """Masks for one prompt, best first when ``keep="best"`` asked for one.

    Attributes:
        masks: (C, H, W) bool at the original image size.
        scores: (C,) float32 predicted IoU of each mask (classical: a heuristic in [0, 1]).
        low_res_logits: (C, 256, 256) float32; feed one back as ``Prompt.mask_logits`` to refine.
    """

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray

    def best(self) -> tuple[np.ndarray, float, np.ndarray]:
        """(mask (H, W) bool, score, logits (1, 256, 256)) of the highest-scoring candidate."""
        i = int(np.argmax(self.scores))
        return self.masks[i], float(self.scores[i]), self.low_res_logits[i : i + 1]


@dataclass(frozen=True)
class ModelInfo:
    """Names a loaded model: what users typed, and the digest of the weights actually loaded."""

    name: str  # "sam", "sam_hq", "mobile_sam", "classical"
    config: str  # "vit_b", "vit_t", "grabcut", ...
    weights_digest: str  # SHA-256 of the checkpoint file ("" for classical)
    device: str  # "cpu", "cuda:0", ...
    checkpoint: str = ""  # path it was loaded from

    @property
    def model_id(self) -> str:
        """Stable id used in cache keys and Label Studio's model_version."""
        digest = self.weights_digest[:12] if self.weights_digest else "none"
        return f"{self.name}-{self.config}-{digest}"


@runtime_checkable
class SegmentationModel(Protocol):
    """A promptable segmenter: encode an image once, decode many prompts against it."""

    info: ModelInfo

    def encode(self, image: np.ndarray, image_digest: str) -> Embedding:
        """image: (H, W, 3) uint8 RGB. Returns the embedding (heavy: seconds on CPU)."""
        ...

    def decode(
        self, embedding: Embedding, prompt: Prompt, *, multimask: bool | None = None, keep: str = "best"
    ) -> Segmentation:
        """Answer one prompt (light: tens of ms).

        multimask: None = three candidates for a single click, one mask otherwise (the official
            predictor's advice); True/False forces it.
        keep: "best" = only the top-scoring candidate is upscaled and returned; "all" = every one.
        """
        ...
