"""Model names, devices and checkpoints → a loaded ``SegmentationModel``.

Names are the ones the original label_anything tool used: ``sam`` (vit_b, vit_l, vit_h), ``sam_hq``
(vit_b, vit_l, vit_h, vit_tiny), ``mobile_sam`` (vit_t), plus ``classical`` (no weights) and ``auto``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from label_anything.engine.prompts import Prompt
from label_anything.engine.types import Embedding, ModelInfo, Segmentation, SegmentationModel
from label_anything.engine.weights import (
    checkpoint_dir,
    file_sha256,
    find_spec,
    load_state_dict,
    missing_checkpoint_message,
)
from label_anything.errors import CheckpointError, DeviceError, LabelAnythingError

log = logging.getLogger(__name__)

MODEL_CONFIGS: dict[str, tuple[str, ...]] = {
    "sam": ("vit_b", "vit_l", "vit_h"),
    "sam_hq": ("vit_b", "vit_l", "vit_h", "vit_tiny"),
    "mobile_sam": ("vit_t",),
    "sam2": ("tiny", "small", "base_plus", "large"),
    "sam3": ("sam3",),
    "classical": ("grabcut",),
}
DEFAULT_CONFIG = {"sam": "vit_b", "sam_hq": "vit_b", "mobile_sam": "vit_t", "sam2": "tiny", "sam3": "sam3",
                  "classical": "grabcut"}
MODEL_NAMES = (*MODEL_CONFIGS, "auto")

# What `auto` picks among downloaded checkpoints: fast ones first on CPU, accurate ones first on GPU.
_AUTO_ORDER_CPU = ("mobile_sam", "sam_hq_vit_tiny", "sam2.1_hiera_tiny", "sam2.1_hiera_small", "sam_vit_b",
                   "sam_hq_vit_b", "sam2.1_hiera_base_plus", "sam_vit_l", "sam_hq_vit_l", "sam2.1_hiera_large",
                   "sam_vit_h", "sam_hq_vit_h")
_AUTO_ORDER_GPU = ("sam2.1_hiera_large", "sam_hq_vit_h", "sam_vit_h", "sam2.1_hiera_base_plus", "sam_hq_vit_l",
                   "sam_vit_l", "sam2.1_hiera_small", "sam_hq_vit_b", "sam_vit_b", "sam2.1_hiera_tiny",
                   "sam_hq_vit_tiny", "mobile_sam")


def resolve_device(device: str = "auto") -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``; checks that an explicit device exists.

    Example:
        >>> resolve_device("cpu")
        'cpu'
    """
    import torch

    device = (device or "auto").strip().lower()
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda:0"
        return "cpu"
    if device == "cpu":
        return "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {device} asked for CUDA, but this PyTorch sees no CUDA GPU; use --device cpu")
        index = 0
        if device != "cuda":
            try:
                index = int(device.split(":", 1)[1])
            except (IndexError, ValueError):
                raise DeviceError(f"--device {device} is not a device name; use cpu, cuda or cuda:N") from None
        if index >= torch.cuda.device_count():
            raise DeviceError(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s), numbered from 0"
            )
        return f"cuda:{index}"
    if device == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceError("--device mps asked for Apple's GPU, which this PyTorch cannot use; use --device cpu")
        return "mps"
    raise DeviceError(f"--device {device} is not a device name; use auto, cpu, cuda, cuda:N or mps")


@dataclass(frozen=True)
class ModelChoice:
    """A fully resolved model request: family, config, checkpoint file (None for classical)."""

    name: str
    config: str
    checkpoint: Path | None


def choose_model(
    name: str = "auto",
    config: str | None = None,
    checkpoint: str | Path | None = None,
    *,
    cache_dir: Path | None = None,
    device: str = "cpu",
) -> ModelChoice:
    """Turn what the user typed into (family, config, checkpoint), or say clearly what is missing."""
    name = (name or "auto").strip().lower()
    if name not in MODEL_NAMES:
        raise LabelAnythingError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    if name == "auto":
        if checkpoint is not None:
            raise LabelAnythingError(
                "--checkpoint needs --model-name (sam, sam_hq, mobile_sam or sam2) to know its architecture"
            )
        if config:  # vit_h alone names no family (SAM or HQ-SAM); auto would silently pick another model
            raise LabelAnythingError(
                f"--sam-config {config} needs --model-name (sam, sam_hq, mobile_sam or sam2): auto picks a "
                "downloaded checkpoint by itself"
            )
        folder = checkpoint_dir(cache_dir)
        from label_anything.engine.weights import CHECKPOINTS

        order = _AUTO_ORDER_GPU if device.startswith("cuda") else _AUTO_ORDER_CPU
        for key in order:
            spec = CHECKPOINTS[key]
            if (folder / spec.filename).is_file():
                return ModelChoice(spec.model, spec.config, folder / spec.filename)
        return ModelChoice("classical", "grabcut", None)
    configs = MODEL_CONFIGS[name]
    config = (config or DEFAULT_CONFIG[name]).strip().lower()
    if config not in configs:
        raise LabelAnythingError(f"model {name} has no config {config!r}; choose one of: {', '.join(configs)}")
    if name == "classical":
        return ModelChoice(name, config, None)
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} does not exist; check the --checkpoint path")
        return ModelChoice(name, config, path)
    spec = find_spec(name, config)
    if spec is None:  # every architecture has one today; keep the message for future ones
        raise CheckpointError(f"{name} {config} has no official checkpoint; pass one with --checkpoint FILE")
    path = checkpoint_dir(cache_dir) / spec.filename
    if not path.is_file():
        raise CheckpointError(missing_checkpoint_message(spec, cache_dir))
    return ModelChoice(name, config, path)


def load_model(
    name: str = "auto",
    config: str | None = None,
    checkpoint: str | Path | None = None,
    *,
    device: str = "auto",
    cache_dir: Path | None = None,
    decoder: str = "torch",
) -> SegmentationModel:
    """Build the architecture from the official package and load the checkpoint into it.

    ``decoder``: "torch" (default), "onnx" (ONNX Runtime on CPU: faster clicks, masks equal within IoU
    0.999; needs the ``[onnx]`` extra) or "auto" (times both at load and keeps the faster). HQ-SAM and
    GPUs always use PyTorch.

    Raises ``CheckpointError`` with one clear sentence for a missing, corrupt or unsafe file, and for
    a checkpoint of another architecture (its tensors do not fit).
    """
    device = resolve_device(device)
    choice = choose_model(name, config, checkpoint, cache_dir=cache_dir, device=device)
    if choice.name == "classical":
        from label_anything.engine.classical import ClassicalModel

        return ClassicalModel()
    assert choice.checkpoint is not None
    if choice.name == "sam2":
        return _load_sam2(choice, device)
    if choice.name == "sam3":
        return _load_sam3(choice, device)
    from label_anything.engine.sam import ARCHITECTURES, SamModel

    arch = ARCHITECTURES[(choice.name, choice.config)]
    state = load_state_dict(choice.checkpoint)
    network = arch.build()
    _load_into(network, state, choice)
    network.to(device)
    info = _model_info(choice, device)
    log.info("loaded %s %s from %s on %s", choice.name, choice.config, choice.checkpoint, device)
    model = SamModel(network, arch, info)
    if decoder != "torch":
        from label_anything.engine.onnx_decoder import choose_decoder

        choose_decoder(model, decoder, cache_dir)
    return model


def _model_info(choice: ModelChoice, device: str) -> ModelInfo:
    """What names a loaded model: family, config, and the SHA-256 of the file actually loaded."""
    assert choice.checkpoint is not None
    return ModelInfo(
        name=choice.name,
        config=choice.config,
        weights_digest=file_sha256(choice.checkpoint),
        device=device,
        checkpoint=str(choice.checkpoint),
    )


def _load_sam2(choice: ModelChoice, device: str) -> SegmentationModel:
    """SAM 2.1 (or SAM 2.0: told apart by its tensors) from an official ``{"model": state_dict}`` file."""
    from label_anything.engine.sam2 import Sam2Architecture, Sam2Model, build_sam2_network, sam2_version_of

    assert choice.checkpoint is not None
    state = load_state_dict(choice.checkpoint)
    version = sam2_version_of(state)
    network = build_sam2_network(choice.config, version)
    _load_into(network, state, choice)
    network.to(device)
    info = _model_info(choice, device)
    log.info("loaded SAM %s %s from %s on %s", version, choice.config, choice.checkpoint, device)
    return Sam2Model(network, Sam2Architecture(choice.name, choice.config, version), info)


def _load_sam3(choice: ModelChoice, device: str) -> SegmentationModel:
    """SAM 3 from an official ``sam3.pt`` (``{"model": {"detector.*", "tracker.*"}}``), clicks included."""
    from label_anything.engine.sam3 import Sam3Model, build_sam3_network, load_sam3_weights

    assert choice.checkpoint is not None
    state = load_state_dict(choice.checkpoint, mmap=True)  # 3.4 GB: read pages as they are copied in
    network = build_sam3_network(device)
    load_sam3_weights(network, state, choice.checkpoint)
    del state
    info = _model_info(choice, device)
    log.info("loaded SAM 3 from %s on %s", choice.checkpoint, device)
    return Sam3Model(network, info)


def _load_into(network, state: dict, choice: ModelChoice) -> None:
    """load_state_dict, strictly: a checkpoint of another architecture must not load half-way."""
    own = network.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        detail = []
        if missing:
            detail.append(f"{len(missing)} tensors missing (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if mismatched:
            k = mismatched[0]
            shapes = f"{tuple(state[k].shape)} vs {tuple(own[k].shape)}"
            detail.append(f"{len(mismatched)} of another shape (e.g. {k}: {shapes})")
        raise CheckpointError(
            f"checkpoint {choice.checkpoint} does not fit {choice.name} {choice.config} ({'; '.join(detail)}); "
            f"pick the --model-name/--sam-config it was trained for"
        )
    network.load_state_dict(state, strict=True)


def encode(model: SegmentationModel, image: np.ndarray, image_digest: str | None = None) -> Embedding:
    """Run the heavy image encoder once: ``(H, W, 3) uint8 RGB`` → ``Embedding``."""
    from label_anything.imaging.decode import image_digest as digest_of

    _check_image(image)
    return model.encode(image, image_digest or digest_of(image))


def decode(
    model: SegmentationModel,
    embedding: Embedding,
    prompt: Prompt,
    *,
    multimask: bool | None = None,
    keep: str = "best",
) -> Segmentation:
    """Answer one prompt from an embedding (the light decoder): masks, scores, low-res logits."""
    return model.decode(embedding, prompt, multimask=multimask, keep=keep)


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError("image must be an (H, W, 3) uint8 RGB array")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError("image has no pixels")
