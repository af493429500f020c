"""Promptable segmentation: encode an image once, decode many prompts. No Label Studio knowledge here."""

from label_anything.engine.models import (
    MODEL_CONFIGS,
    MODEL_NAMES,
    choose_model,
    decode,
    encode,
    load_model,
    resolve_device,
)
from label_anything.engine.prompts import Prompt
from label_anything.engine.types import Embedding, ModelInfo, Segmentation, SegmentationModel

__all__ = [
    "MODEL_CONFIGS",
    "MODEL_NAMES",
    "Embedding",
    "ModelInfo",
    "Prompt",
    "Segmentation",
    "SegmentationModel",
    "choose_model",
    "decode",
    "encode",
    "load_model",
    "resolve_device",
]
