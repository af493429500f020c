"""SAM, HQ-SAM and MobileSAM as pure encode/decode functions over the official model code.

The official ``SamPredictor`` keeps the last image inside itself, so one predictor cannot serve two
requests at once. This module runs the same steps (the packages' own ``ResizeLongestSide``,
``preprocess``, prompt encoder, mask decoder and ``postprocess_masks``) without hidden state: the
image's features live in an ``Embedding`` value, and decode() takes it as an argument. A test
compares our masks with the official predictor's on the same weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from label_anything.engine.prompts import Prompt
from label_anything.engine.sam_inputs import LowResDecoder, sam_point_inputs
from label_anything.engine.types import Embedding, ModelInfo, Segmentation
from label_anything.errors import PromptError
from label_anything.geometry.upscale import sam_logits_to_masks


@dataclass(frozen=True)
class Architecture:
    """How to build one (family, config) from the official packages."""

    family: str
    config: str
    build: Callable[[], torch.nn.Module]
    hq: bool = False


def _registry(module_name: str) -> dict[str, Callable[..., torch.nn.Module]]:
    import importlib
    import warnings

    with warnings.catch_warnings():
        # MobileSAM and HQ-SAM re-register TinyViT in timm and use timm's old import paths: noise
        # for our users, nothing they can act on.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        return importlib.import_module(module_name).sam_model_registry


def _builder(module_name: str, key: str) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        return _registry(module_name)[key](checkpoint=None)

    return build


ARCHITECTURES: dict[tuple[str, str], Architecture] = {
    **{("sam", c): Architecture("sam", c, _builder("segment_anything", c)) for c in ("vit_b", "vit_l", "vit_h")},
    **{
        ("sam_hq", c): Architecture("sam_hq", c, _builder("segment_anything_hq", c), hq=True)
        for c in ("vit_b", "vit_l", "vit_h", "vit_tiny")
    },
    ("mobile_sam", "vit_t"): Architecture("mobile_sam", "vit_t", _builder("mobile_sam", "vit_t")),
}


class SamModel:
    """A SAM-family network, read-only after construction; safe to share between threads.

    Build it with ``label_anything.engine.models.load_model``; this class only runs it.

    Decoder runtime: PyTorch, or an ONNX Runtime session (``onnx_decoder.OnnxDecoder``) given as
    ``onnx_decoder`` here or attached with ``attach_onnx_decoder`` while the model is loaded
    (``onnx_decoder.enable_onnx_decoder`` / ``choose_decoder``, which ``load_model`` runs), before the model
    is shared. Only side-by-side timings (``choose_decoder``'s "auto", the benchmark) switch it later.
    """

    def __init__(
        self, network: torch.nn.Module, arch: Architecture, info: ModelInfo, onnx_decoder: LowResDecoder | None = None
    ) -> None:
        from segment_anything.utils.transforms import ResizeLongestSide

        self.network = network.eval()
        for p in self.network.parameters():
            p.requires_grad_(False)
        self.arch = arch
        self.info = info
        self.device = torch.device(info.device)
        self.transform = ResizeLongestSide(self.network.image_encoder.img_size)
        # The dense positional encoding depends only on the weights, yet the official predictor
        # recomputes it on every click (~5-50 ms on 2 busy cores): compute it once, same op, same values.
        with torch.inference_mode():
            self._image_pe = self.network.prompt_encoder.get_dense_pe()
        # Optional ONNX Runtime decoder (label_anything.engine.onnx_decoder.enable_onnx_decoder).
        self.onnx_decoder: LowResDecoder | None = onnx_decoder

    def attach_onnx_decoder(self, decoder: LowResDecoder | None) -> None:
        """Decode with ``decoder`` (an ``onnx_decoder.OnnxDecoder``), or with PyTorch again for None.

        A loading step: call it before the model is shared between threads. HQ-SAM ignores it (its decoder
        needs the HQ features; it keeps PyTorch).
        """
        self.onnx_decoder = decoder

    # -- encode ------------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, image: np.ndarray, image_digest: str) -> Embedding:
        """image: (H, W, 3) uint8 RGB → Embedding with ``features`` (1, 256, 64, 64) float32.

        HQ-SAM: also ``hq_features`` (1, 32, 256, 256) — the decoder's image-only branch, computed
        here once instead of on every click.
        """
        if self.network.image_format != "RGB":  # all official models are RGB; keep the predictor's rule
            image = image[..., ::-1]
        resized = self.transform.apply_image(image)
        x = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        input_size = (int(x.shape[-2]), int(x.shape[-1]))
        x = self.network.preprocess(x)
        arrays: dict[str, np.ndarray] = {}
        if self.arch.hq:
            features, interm = self.network.image_encoder(x)
            decoder = self.network.mask_decoder
            vit_features = interm[0].permute(0, 3, 1, 2)
            hq_features = decoder.embedding_encoder(features) + decoder.compress_vit_feat(vit_features)
            arrays["hq_features"] = hq_features.float().cpu().numpy()
        else:
            features = self.network.image_encoder(x)
        arrays["features"] = features.float().cpu().numpy()
        return Embedding(
            model_id=self.info.model_id,
            image_digest=image_digest,
            original_size=(int(image.shape[0]), int(image.shape[1])),
            input_size=input_size,
            arrays=arrays,
        )

    # -- decode ------------------------------------------------------------------------------------
    def _tensor(self, embedding: Embedding, key: str) -> torch.Tensor:
        return torch.from_numpy(embedding.arrays[key]).to(self.device, torch.float32)

    @torch.inference_mode()
    def decode(
        self,
        embedding: Embedding,
        prompt: Prompt,
        *,
        multimask: bool | None = None,
        keep: str = "best",
        hq_token_only: bool = False,
    ) -> Segmentation:
        """Masks for one prompt; see ``SegmentationModel.decode``.

        Only the kept candidates are upscaled to the image size: with ``keep="best"`` that is one
        mask instead of three, the largest single saving on the click path.
        """
        low_res, iou = self.decode_low_res(
            embedding, prompt, multimask=multimask, keep=keep, hq_token_only=hq_token_only
        )
        return Segmentation(
            masks=self.masks_from_low_res(low_res, embedding),
            scores=iou.float().cpu().numpy(),
            low_res_logits=low_res.float().cpu().numpy(),
        )

    @torch.inference_mode()
    def decode_low_res(
        self,
        embedding: Embedding,
        prompt: Prompt,
        *,
        multimask: bool | None = None,
        keep: str = "best",
        hq_token_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt encoder and mask decoder alone: (C, 256, 256) logits and (C,) predicted IoU."""
        if embedding.model_id != self.info.model_id:
            raise ValueError(f"embedding from {embedding.model_id} given to {self.info.model_id}")
        if keep not in ("best", "all"):
            raise ValueError(f"keep must be 'best' or 'all', got {keep!r}")
        if multimask is None:
            multimask = prompt.is_single_click
        if prompt.mask_logits is not None and prompt.mask_logits.shape != (1, 256, 256):
            raise PromptError(f"SAM refines with its own (1, 256, 256) logits, got {prompt.mask_logits.shape}")
        original_size = embedding.original_size
        points = None
        if len(prompt.points):
            coords = self.transform.apply_coords(prompt.points.astype(np.float64), original_size)
            coords_t = torch.as_tensor(coords, dtype=torch.float, device=self.device)[None]
            labels_t = torch.as_tensor(prompt.point_labels, dtype=torch.int, device=self.device)[None]
            points = (coords_t, labels_t)
        boxes = None
        if prompt.box is not None:
            box = self.transform.apply_boxes(prompt.box.astype(np.float64)[None], original_size)
            boxes = torch.as_tensor(box, dtype=torch.float, device=self.device)
        if self.onnx_decoder is not None and not self.arch.hq:
            low_res, iou = self._decode_onnx(embedding, points, boxes, prompt, multimask)
        else:
            low_res, iou = self._decode_torch(embedding, points, boxes, prompt, multimask, hq_token_only)
        low_res, iou = low_res[0], iou[0]  # (C, 256, 256), (C,)
        if keep == "best" and len(iou) > 1:
            i = int(torch.argmax(iou))
            low_res, iou = low_res[i : i + 1], iou[i : i + 1]
        return low_res, iou

    @torch.inference_mode()
    def masks_from_low_res(self, low_res: torch.Tensor, embedding: Embedding) -> np.ndarray:
        """(C, 256, 256) logits → (C, H, W) bool masks at the size of ``embedding``'s image."""
        return self._masks(low_res, embedding.input_size, embedding.original_size)

    def _masks(self, low_res: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]) -> np.ndarray:
        """(C, 256, 256) logits → (C, H, W) bool: ``postprocess_masks(...) > mask_threshold``.

        On the CPU only the window around the object is upscaled (``upscale.sam_logits_to_masks``): on a
        4000×3000 photo that is most of a click's upscaling time saved.
        """
        net = self.network
        if self.device.type == "cpu" and net.mask_threshold == 0.0:
            return sam_logits_to_masks(low_res.float(), input_size, original_size, net.image_encoder.img_size)
        masks = net.postprocess_masks(low_res[None], input_size, original_size)[0]
        return (masks > net.mask_threshold).cpu().numpy()

    def _decode_torch(
        self,
        embedding: Embedding,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        prompt: Prompt,
        multimask: bool,
        hq_token_only: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The official prompt encoder + mask decoder: (1, C, 256, 256) logits, (1, C) scores."""
        net = self.network
        masks_in = None
        if prompt.mask_logits is not None:
            masks_in = torch.as_tensor(prompt.mask_logits, dtype=torch.float, device=self.device)[None]
        sparse, dense = net.prompt_encoder(points=points, boxes=boxes, masks=masks_in)
        features = self._tensor(embedding, "features")
        image_pe = self._image_pe
        if self.arch.hq:
            low_res, iou = self._decode_hq(embedding, features, image_pe, sparse, dense, multimask, hq_token_only)
        else:
            low_res, iou = net.mask_decoder(
                image_embeddings=features,
                image_pe=image_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
            )
        return low_res, iou

    def _decode_onnx(
        self,
        embedding: Embedding,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        prompt: Prompt,
        multimask: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The same decoder in ONNX Runtime; candidates chosen as ``MaskDecoder.forward`` does."""
        coords, labels = sam_point_inputs(
            None if points is None else points[0][0].cpu().numpy(),
            None if points is None else points[1][0].cpu().numpy(),
            None if boxes is None else boxes[0].cpu().numpy(),
        )
        masks, iou = self.onnx_decoder.run(embedding.arrays["features"], coords, labels, prompt.mask_logits)
        chosen = slice(1, None) if multimask else slice(0, 1)  # token 0 = single mask, 1..3 = multimask
        low_res = torch.from_numpy(masks[:, chosen]).to(self.device)
        return low_res, torch.from_numpy(iou[:, chosen]).to(self.device)

    def _decode_hq(
        self,
        embedding: Embedding,
        features: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        multimask: bool,
        hq_token_only: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """HQ-SAM's ``MaskDecoderHQ.forward`` minus its image-only branch (precomputed in encode()).

        Like the official decoder, multimask output is folded into one mask: the best of SAM's three
        candidates plus the HQ token's mask.
        """
        decoder = self.network.mask_decoder
        masks, iou = decoder.predict_masks(
            image_embeddings=features,
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            hq_features=self._tensor(embedding, "hq_features"),
        )
        n = decoder.num_mask_tokens
        if multimask:
            iou_multi = iou[:, 1 : n - 1]
            iou, best = torch.max(iou_multi, dim=1)
            iou = iou[:, None]
            masks_sam = masks[:, 1 : n - 1][torch.arange(masks.shape[0]), best][:, None]
        else:
            iou = iou[:, 0:1]
            masks_sam = masks[:, 0:1]
        masks_hq = masks[:, n - 1 : n]
        return (masks_hq if hq_token_only else masks_sam + masks_hq), iou
