"""SAM 2 / SAM 2.1 (Hiera tiny, small, base_plus, large) as pure encode/decode functions.

Implementation: Meta's own SAM 2 model code, as packaged on PyPI by Roboflow (``rf-sam-2``, import
name ``sam2``; source https://github.com/roboflow/sam2, a packaging of facebookresearch/sam2). It
builds the exact official architecture from the official Hydra configs (shipped in the wheel) and
loads the official ``.pt`` checkpoints (``{"model": state_dict}``) unchanged — no key conversion.
(The PyPI package named ``sam2`` is a third-party re-upload; do not install it next to rf-sam-2: both
provide the ``sam2`` import name.)

Like ``sam.py`` for SAM 1, this module runs the steps of the official ``SAM2ImagePredictor``
(``SAM2Transforms``, ``forward_image``, ``_prepare_backbone_features``, ``no_mem_embed``, prompt
encoder, mask decoder with the high-resolution features, bilinear upscaling) without its hidden
state: the image's features live in an ``Embedding``, and decode() takes it as an argument.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from label_anything.engine.prompts import Prompt
from label_anything.engine.types import Embedding, ModelInfo, Segmentation
from label_anything.errors import LabelAnythingError, PromptError
from label_anything.geometry.upscale import upscale_to_mask

SAM2_CONFIGS = ("tiny", "small", "base_plus", "large")
_SHORT = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}

# Embedding arrays: the image embedding and the two high-resolution maps (already projected by the
# decoder's conv_s0 / conv_s1, as the official predictor caches them).
FEATURE_KEYS = ("features", "high_res_feats_0", "high_res_feats_1")


def config_file(config: str, version: str = "2.1") -> str:
    """The official Hydra config of a SAM 2 (``version="2"``) or SAM 2.1 architecture."""
    short = _SHORT[config]
    if version == "2.1":
        return f"configs/sam2.1/sam2.1_hiera_{short}.yaml"
    return f"configs/sam2/sam2_hiera_{short}.yaml"


def _sam2_package():
    try:
        import sam2  # noqa: F401  (initialises Hydra's config search path to the package's configs)
        from sam2.build_sam import build_sam2
    except ImportError as exc:
        raise LabelAnythingError(
            f"SAM 2 needs Meta's SAM 2 code: pip install rf-sam-2 (Roboflow's packaging; not the PyPI "
            f"package named 'sam2', a third-party re-upload) [{exc}]"
        ) from None
    return build_sam2


def build_sam2_network(config: str, version: str = "2.1") -> torch.nn.Module:
    """The official architecture with fresh (random) weights, on CPU, in eval mode.

    ``build_sam2``'s default post-processing options (dynamic multimask via stability) are kept, so
    the network behaves exactly like the one the official image predictor uses.
    """
    if config not in SAM2_CONFIGS:
        raise LabelAnythingError(f"sam2 has no config {config!r}; choose one of: {', '.join(SAM2_CONFIGS)}")
    build_sam2 = _sam2_package()
    return build_sam2(config_file(config, version), ckpt_path=None, device="cpu", mode="eval")


@dataclass(frozen=True)
class Sam2Architecture:
    family: str
    config: str
    version: str  # "2.1" or "2"


class Sam2Model:
    """A SAM 2 network, read-only after construction; safe to share between threads.

    Build it with ``label_anything.engine.models.load_model("sam2", "tiny", ...)``.
    """

    def __init__(self, network: torch.nn.Module, arch: Sam2Architecture, info: ModelInfo) -> None:
        from sam2.utils.transforms import SAM2Transforms

        self.network = network.eval()
        for p in self.network.parameters():
            p.requires_grad_(False)
        self.arch = arch
        self.info = info
        self.device = torch.device(info.device)
        self.resolution = int(self.network.image_size)
        self.mask_threshold = 0.0
        # The official predictor's transform (stateless once built); eager rather than TorchScript, whose
        # `torch.jit.script` is deprecated: the same ops, the same pixels (checked by tests/test_sam2.py).
        self.transforms = SAM2Transforms(
            resolution=self.resolution, mask_threshold=self.mask_threshold, disable_torch_jit=True
        )
        with torch.inference_mode():
            self._image_pe = self.network.sam_prompt_encoder.get_dense_pe()
        self.onnx_decoder = None  # not supported for SAM 2; kept for interface symmetry

    # -- encode ------------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, image: np.ndarray, image_digest: str) -> Embedding:
        """image: (H, W, 3) uint8 RGB → Embedding with ``features`` (1, 256, 64, 64), ``high_res_feats_0``
        (1, 32, 256, 256) and ``high_res_feats_1`` (1, 64, 128, 128), float32."""
        net = self.network
        x = self.transforms(np.ascontiguousarray(image))[None].to(self.device)
        backbone_out = net.forward_image(x)
        _, vision_feats, _, feat_sizes = net._prepare_backbone_features(backbone_out)
        if net.directly_add_no_mem_embed:
            vision_feats[-1] = vision_feats[-1] + net.no_mem_embed
        feats = [
            feat.permute(1, 2, 0).reshape(1, -1, *size) for feat, size in zip(vision_feats, feat_sizes, strict=True)
        ]
        arrays = {
            "features": feats[-1].float().cpu().numpy(),
            "high_res_feats_0": feats[0].float().cpu().numpy(),
            "high_res_feats_1": feats[1].float().cpu().numpy(),
        }
        return Embedding(
            model_id=self.info.model_id,
            image_digest=image_digest,
            original_size=(int(image.shape[0]), int(image.shape[1])),
            input_size=(self.resolution, self.resolution),
            arrays=arrays,
        )

    # -- decode ------------------------------------------------------------------------------------
    def _tensor(self, embedding: Embedding, key: str) -> torch.Tensor:
        return torch.from_numpy(embedding.arrays[key]).to(self.device, torch.float32)

    @torch.inference_mode()
    def decode(
        self, embedding: Embedding, prompt: Prompt, *, multimask: bool | None = None, keep: str = "best"
    ) -> Segmentation:
        """Masks for one prompt; see ``SegmentationModel.decode``."""
        if embedding.model_id != self.info.model_id:
            raise ValueError(f"embedding from {embedding.model_id} given to {self.info.model_id}")
        if keep not in ("best", "all"):
            raise ValueError(f"keep must be 'best' or 'all', got {keep!r}")
        missing = [k for k in FEATURE_KEYS if k not in embedding.arrays]
        if missing:
            raise ValueError(f"embedding lacks {missing[0]}: not a SAM 2 embedding")
        if multimask is None:
            multimask = prompt.is_single_click
        h, w = embedding.original_size
        low_res, iou = sam2_style_logits(
            self.network, self._image_pe, [self._tensor(embedding, k) for k in FEATURE_KEYS], prompt,
            (h, w), self.resolution, multimask=multimask, keep=keep,
        )
        return Segmentation(
            masks=self._masks(low_res, (h, w)),
            scores=iou.float().cpu().numpy(),
            low_res_logits=torch.clamp(low_res, -32.0, 32.0).float().cpu().numpy(),
        )

    def _masks(self, low_res: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """(C, 256, 256) logits → (C, H, W) bool, upscaled straight to the image size as Meta's predictor does.

        On the CPU only the window around the object is upscaled (``upscale.upscale_to_mask``).
        """
        if self.device.type == "cpu" and self.mask_threshold == 0.0:
            masks = np.zeros((low_res.shape[0], *size), dtype=bool)
            for channel, mask in zip(low_res.float(), masks, strict=True):
                upscale_to_mask(channel, size, out=mask)
            return masks
        masks = torch.nn.functional.interpolate(low_res[None].float(), size, mode="bilinear", align_corners=False)
        return (masks[0] > self.mask_threshold).cpu().numpy()



def sam2_style_logits(
    network: torch.nn.Module,
    image_pe: torch.Tensor,
    features: list[torch.Tensor],
    prompt: Prompt,
    size: tuple[int, int],
    resolution: int,
    *,
    multimask: bool,
    keep: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompt encoder and mask decoder of a SAM 2 network (SAM 2.1's, or SAM 3's click tracker), as the
    official image predictor's ``_predict`` runs them: (C, S, S) low-res logits and (C,) predicted IoU.

    Args:
        network: has ``sam_prompt_encoder`` and ``sam_mask_decoder``.
        image_pe: ``sam_prompt_encoder.get_dense_pe()``, computed once per model.
        features: the image embedding (1, 256, s, s) and the two high-resolution maps, as ``FEATURE_KEYS``.
        prompt: pixels of the original image of ``size`` (H, W); the box goes first, as two corner points
            labelled 2 and 3; every coordinate is scaled to the ``resolution`` × ``resolution`` input frame
            (``SAM2Transforms.transform_coords``).
        keep: "best" = only the top-scoring candidate, "all" = every one.
    """
    device = image_pe.device
    h, w = size
    size_xy = torch.tensor([w, h], dtype=torch.float, device=device)

    def to_input_frame(xy: torch.Tensor) -> torch.Tensor:  # as ``transform_coords``: / size, then * resolution
        return xy / size_xy * resolution

    coords: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    if prompt.box is not None:
        coords.append(to_input_frame(torch.as_tensor(prompt.box, dtype=torch.float, device=device).reshape(2, 2)))
        labels.append(torch.tensor([2, 3], dtype=torch.int, device=device))
    if len(prompt.points):
        coords.append(to_input_frame(torch.as_tensor(prompt.points, dtype=torch.float, device=device)))
        labels.append(torch.as_tensor(prompt.point_labels, dtype=torch.int, device=device))
    masks_in = None
    if prompt.mask_logits is not None:
        side = 4 * int(features[0].shape[-1])  # the decoder's own low-res answer: 4 × the embedding's side
        if prompt.mask_logits.shape != (1, side, side):
            raise PromptError(f"this model refines with its own (1, {side}, {side}) logits, got "
                              f"{prompt.mask_logits.shape}")
        masks_in = torch.as_tensor(prompt.mask_logits, dtype=torch.float, device=device)[None]
    sparse, dense = network.sam_prompt_encoder(
        points=(torch.cat(coords)[None], torch.cat(labels)[None]), boxes=None, masks=masks_in
    )
    low_res, iou, _, _ = network.sam_mask_decoder(
        image_embeddings=features[0],
        image_pe=image_pe,
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
        repeat_image=False,
        high_res_features=features[1:],
    )
    low_res, iou = low_res[0], iou[0]
    if keep == "best" and len(iou) > 1:
        i = int(torch.argmax(iou))
        low_res, iou = low_res[i : i + 1], iou[i : i + 1]
    return low_res, iou


def sam2_version_of(state: dict) -> str:
    """Return "2.1" or "2": SAM 2.1 checkpoints carry ``no_obj_embed_spatial`` and ``obj_ptr_tpos_proj``."""
    return "2.1" if "no_obj_embed_spatial" in state else "2"
