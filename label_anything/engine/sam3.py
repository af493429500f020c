"""SAM 3 (Meta, 2025) as pure encode / decode / find_instances functions over Meta's own code.

Implementation: PyPI ``sam3`` (Meta's package, under Meta's SAM License: the ``[sam3]`` extra). We use
it rather than Hugging Face ``transformers``' ``Sam3Model``: it loads the official ``sam3.pt`` unchanged
(``transformers`` ships no mapping from its weight names), and its click predictor shares the image
encoder, where ``transformers``' tracker carries a second 458M-parameter vision encoder.

One encode serves every prompt: the vision backbone's two branches are kept in the ``Embedding`` —
the detector's feature pyramid (for concept prompts) and the tracker's (for clicks, already projected
by the mask decoder's ``conv_s0`` / ``conv_s1`` and with ``no_mem_embed`` added, as the official
``predict_inst`` prepares them). Their positional encodings are functions of the map sizes only, so
they are computed once per model, not stored per image.

The official ``Sam3Processor`` keeps the image and the prompts in a state dict it mutates, and its
click predictor keeps the image inside itself; here the same steps run from the ``Embedding`` with
nothing kept between calls. Tests compare our answers with the official processor's and
``predict_inst``'s on the same weights.

CPU: sam3 0.1.4 creates two tensors on ``"cuda"`` while building (position_encoding.py, decoder.py)
and pins memory for every box prompt (geometry_encoders.py). ``build_sam3_network`` redirects the
first two to the CPU when the network is built for it, and pinning becomes a no-op on a machine without
CUDA, where it could only fail (upstream facebookresearch/sam3 #154, #179, #597). Image features are
bit-identical to an unpatched build's.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from label_anything.engine.concepts import ConceptPrompt, Instances
from label_anything.engine.prompts import Prompt
from label_anything.engine.sam2 import sam2_style_logits
from label_anything.engine.types import Embedding, ModelInfo, Segmentation
from label_anything.errors import CheckpointError, LabelAnythingError
from label_anything.geometry.coords import xyxy_to_unit_cxcywh
from label_anything.geometry.upscale import upscale_to_mask

log = logging.getLogger(__name__)

SAM3_RESOLUTION = 1008
"""SAM 3 resizes every image to 1008 × 1008 (aspect not kept); patch 14 → 72 × 72 tokens."""

SAM3_LOW_RES_SIZE = 288
"""Side of the click decoder's low-res logits (and of its mask prompt): 4 × 72."""

# Embedding arrays. Detector pyramid: (1, 256, 288, 288), (1, 256, 144, 144), (1, 256, 72, 72).
DETECTOR_KEYS = ("detector_fpn_0", "detector_fpn_1", "detector_fpn_2")
# Click (tracker) branch: (1, 256, 72, 72) with no_mem_embed, (1, 32, 288, 288), (1, 64, 144, 144).
TRACKER_KEYS = ("features", "high_res_feats_0", "high_res_feats_1")
FEATURE_SIZES = ((288, 288), (144, 144), (72, 72))

BPE_VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
"""CLIP's BPE vocabulary ``bpe_simple_vocab_16e6.txt.gz``, which the sam3 wheel lacks; open_clip ships it."""

MAX_INSTANCE_MASK_BYTES = 1 << 31
"""At most this much memory in one answer's full-size masks (bool, a byte a pixel): SAM 3 has 200 queries, and
200 masks of a 100-megapixel image would be 20 GB. When a low threshold keeps more than fit, the best-scoring
ones that fit are answered and ``Instances.left_out`` counts the rest (logged)."""

_MASK_CHUNK_PIXELS = 1 << 25
"""Masks are upscaled a few at a time so a query's float buffers stay under ~128 MB at any image size."""

_INSTALL_HINT = "pip install 'label-anything[sam3]' (Meta's SAM 3 code, under Meta's SAM License)"


@contextlib.contextmanager
def _without_sam3_noise() -> Iterator[None]:
    """sam3 sets up CUDA autocast and calls ``torch.jit.script`` while importing and building: warnings about a
    GPU a CPU user does not have, and about PyTorch's API, that no user of ours can act on."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*CUDA is not available.*", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
        yield


def sam3_package() -> types.ModuleType:
    """The ``sam3`` package, or one sentence saying how to install it."""
    try:
        with _without_sam3_noise():
            import sam3
            import sam3.model_builder
    except ImportError as exc:
        raise LabelAnythingError(f"SAM 3 needs Meta's sam3 package: {_INSTALL_HINT} [{exc}]") from None
    return sam3


def bpe_vocab_path() -> Path:
    """The CLIP BPE vocabulary SAM 3's tokenizer reads: sam3's own copy if a build ships it, else open_clip's."""
    candidates = []
    with contextlib.suppress(ImportError):
        import sam3

        candidates.append(Path(sam3.__file__).parent / "assets" / "bpe_simple_vocab_16e6.txt.gz")
    with contextlib.suppress(ImportError):
        import open_clip

        candidates.append(Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz")
    for path in candidates:
        if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == BPE_VOCAB_SHA256:
            return path
    raise LabelAnythingError(
        f"SAM 3's text encoder needs CLIP's BPE vocabulary (bpe_simple_vocab_16e6.txt.gz), found in neither "
        f"sam3 nor open_clip: {_INSTALL_HINT}"
    )


class _CudaToDevice:
    """A stand-in for the ``torch`` module inside one sam3 module while it builds: ``device="cuda"`` in
    ``zeros`` / ``arange`` becomes ``device``; everything else is torch itself."""

    def __init__(self, device: str) -> None:
        self._device = device

    def __getattr__(self, name: str):
        return getattr(torch, name)

    def _fix(self, kwargs: dict) -> dict:
        if str(kwargs.get("device", "")).startswith("cuda"):
            kwargs["device"] = self._device
        return kwargs

    def zeros(self, *args, **kwargs):
        return torch.zeros(*args, **self._fix(kwargs))

    def arange(self, *args, **kwargs):
        return torch.arange(*args, **self._fix(kwargs))


_build_lock = threading.Lock()


@contextlib.contextmanager
def _built_on(device: str) -> Iterator[None]:
    """While building: sam3's hard-coded ``"cuda"`` tensors go to ``device`` when it is not the current GPU
    (the CPU, or ``cuda:N`` beside it: those tensors are caches, not parameters, and ``.to()`` would not move
    them)."""
    from sam3.model import decoder, position_encoding

    if _is_current_gpu(device):
        yield
        return
    with _build_lock:  # the modules' ``torch`` name is swapped for the build only
        saved = position_encoding.torch, decoder.torch
        position_encoding.torch = decoder.torch = _CudaToDevice(device)
        try:
            yield
        finally:
            position_encoding.torch, decoder.torch = saved


def _is_current_gpu(device: str) -> bool:
    """``device`` is what sam3's own ``"cuda"`` means: the current CUDA device."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return False
    return torch.device(device).index in (None, torch.cuda.current_device())


_pin_patch_lock = threading.Lock()


def _pinning_without_cuda_is_a_no_op() -> None:
    """``Tensor.pin_memory()`` raises on a machine without CUDA; sam3 pins a 4-number tensor for every
    box prompt. Pinning only speeds up host→GPU copies, so without a GPU it becomes the identity.
    Idempotent; changes nothing on a machine with CUDA."""
    if torch.cuda.is_available():
        return
    with _pin_patch_lock:
        original = torch.Tensor.pin_memory
        if getattr(original, "_label_anything_no_cuda", False):
            return

        def pin_memory(self, *args, **kwargs):
            if not torch.cuda.is_available():
                return self
            return original(self, *args, **kwargs)

        pin_memory._label_anything_no_cuda = True  # type: ignore[attr-defined]
        torch.Tensor.pin_memory = pin_memory  # type: ignore[method-assign]


def build_sam3_network(device: str = "cpu") -> torch.nn.Module:
    """The official SAM 3 image architecture with the click predictor, random weights, in eval mode.

    ``build_sam3_image_model(..., load_from_HF=False, enable_inst_interactivity=True)``; ~9–14 s on
    2 CPU cores, ~3.4 GB of float32 parameters.
    """
    sam3_package()
    from sam3.model_builder import build_sam3_image_model

    _pinning_without_cuda_is_a_no_op()
    with _built_on(device), _without_sam3_noise():
        network = build_sam3_image_model(
            bpe_path=str(bpe_vocab_path()),
            device="cuda" if _is_current_gpu(device) else "cpu",  # else built on the CPU, then moved
            eval_mode=True,
            checkpoint_path=None,
            load_from_HF=False,
            enable_inst_interactivity=True,
        )
    return network.to(device).eval()


def checkpoint_to_network_state(checkpoint: dict) -> dict:
    """An official ``sam3.pt`` state dict (``detector.*``, ``tracker.*``) → the image network's names.

    As the official loader: ``detector.`` is dropped, ``tracker.`` becomes
    ``inst_interactive_predictor.model.``; other tensors (the video model's) are not the image model's.
    """
    state = {}
    for key, value in checkpoint.items():
        if key.startswith("detector."):
            state[key[len("detector."):]] = value
        elif key.startswith("tracker."):
            state["inst_interactive_predictor.model." + key[len("tracker."):]] = value
    return state


def network_state_to_checkpoint(state: dict) -> dict:
    """The inverse of ``checkpoint_to_network_state``: what an official ``sam3.pt`` holds (tests write one)."""
    out = {}
    prefix = "inst_interactive_predictor.model."
    for key, value in state.items():
        out[("tracker." + key[len(prefix):]) if key.startswith(prefix) else ("detector." + key)] = value
    return out


def load_sam3_weights(network: torch.nn.Module, checkpoint: dict, path: Path) -> None:
    """Load an official checkpoint strictly: every tensor of the image model, none of another shape."""
    state = checkpoint_to_network_state(checkpoint)
    own = network.state_dict()
    missing = [k for k in own if k not in state]
    mismatched = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if not state or missing or mismatched:
        if not state:
            detail = "no detector.* or tracker.* tensors"
        elif missing:
            detail = f"{len(missing)} tensors missing (e.g. {missing[0]})"
        else:
            k = mismatched[0]
            detail = f"{len(mismatched)} of another shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})"
        raise CheckpointError(
            f"checkpoint {path} is not a SAM 3 checkpoint ({detail}); pass the official sam3.pt "
            f"(`label-anything download sam3`) or pick the --model-name it was trained for"
        )
    network.load_state_dict({k: state[k] for k in own}, strict=True)


class Sam3Model:
    """A SAM 3 network, read-only after construction; safe to share between threads.

    Build it with ``label_anything.engine.models.load_model("sam3", ...)``.
    """

    def __init__(self, network: torch.nn.Module, info: ModelInfo) -> None:
        from sam3.model.sam3_image_processor import Sam3Processor
        from sam3.model.utils.sam1_utils import SAM2Transforms

        self.network = network.eval()
        for p in self.network.parameters():
            p.requires_grad_(False)
        self.info = info
        self.device = torch.device(info.device)
        _pinning_without_cuda_is_a_no_op()
        tracker = network.inst_interactive_predictor
        # The official objects, used only for their stateless parts: the image transform, the
        # "one image, one text" FindStage, and the click predictor's mask post-processing (fills holes
        # of up to 256 low-res pixels; needs scikit-image on CPU, a dependency of ours).
        processor = Sam3Processor(network, resolution=SAM3_RESOLUTION, device=str(self.device))
        self._transform = processor.transform
        self._find_stage = processor.find_stage
        with _without_sam3_noise():
            self._click_transforms = SAM2Transforms(
                resolution=SAM3_RESOLUTION,
                mask_threshold=tracker.mask_threshold,
                max_hole_area=tracker._transforms.max_hole_area,
                max_sprinkle_area=tracker._transforms.max_sprinkle_area,
            )
        self._tracker = tracker.model
        self.mask_threshold = float(tracker.mask_threshold)
        with torch.inference_mode():
            self._click_pe = self._tracker.sam_prompt_encoder.get_dense_pe()
            encoding = network.backbone.vision_backbone.position_encoding
            self._detector_pos = [
                encoding(torch.zeros((1, 256, *size), device=self.device)).clone() for size in FEATURE_SIZES
            ]
        # The detector's forward keeps small caches in its modules; one query at a time, as on one GPU.
        self._query_lock = threading.Lock()
        self._text_cache: dict[str, dict[str, torch.Tensor]] = {}
        self._text_lock = threading.Lock()
        self.onnx_decoder = None  # interface symmetry with SamModel

    # -- encode ------------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, image: np.ndarray, image_digest: str) -> Embedding:
        """image: (H, W, 3) uint8 RGB → Embedding with both branches' pyramids (float32, ~132 MB)."""
        from torchvision.transforms import v2

        if not image.flags.writeable:  # torch.from_numpy warns on a read-only array (a decoded file often is)
            image = image.copy()
        x = v2.functional.to_image(np.ascontiguousarray(image)).to(self.device)
        x = self._transform(x).unsqueeze(0)
        with self._query_lock:
            out = self.network.backbone.forward_image(x)
        arrays = {k: t.float().cpu().numpy() for k, t in zip(DETECTOR_KEYS, out["backbone_fpn"], strict=True)}
        sam2 = out["sam2_backbone_out"]
        decoder = self._tracker.sam_mask_decoder
        fpn = list(sam2["backbone_fpn"])
        fpn[0] = decoder.conv_s0(fpn[0])
        fpn[1] = decoder.conv_s1(fpn[1])
        arrays["features"] = (fpn[2] + self._tracker.no_mem_embed.view(1, -1, 1, 1)).float().cpu().numpy()
        arrays["high_res_feats_0"] = fpn[0].float().cpu().numpy()
        arrays["high_res_feats_1"] = fpn[1].float().cpu().numpy()
        return Embedding(
            model_id=self.info.model_id,
            image_digest=image_digest,
            original_size=(int(image.shape[0]), int(image.shape[1])),
            input_size=(SAM3_RESOLUTION, SAM3_RESOLUTION),
            arrays=arrays,
        )

    def _check(self, embedding: Embedding, keys: tuple[str, ...]) -> None:
        if embedding.model_id != self.info.model_id:
            raise ValueError(f"embedding from {embedding.model_id} given to {self.info.model_id}")
        missing = [k for k in keys if k not in embedding.arrays]
        if missing:
            raise ValueError(f"embedding lacks {missing[0]}: not a SAM 3 embedding")

    def _tensor(self, embedding: Embedding, key: str) -> torch.Tensor:
        return torch.from_numpy(embedding.arrays[key]).to(self.device, torch.float32)

    # -- clicks --------------------------------------------------------------------------------------
    @torch.inference_mode()
    def decode(
        self, embedding: Embedding, prompt: Prompt, *, multimask: bool | None = None, keep: str = "best"
    ) -> Segmentation:
        """Masks for clicks and/or a box, as the official ``predict_inst``; see ``SegmentationModel.decode``.

        ``prompt.mask_logits`` (refinement) is SAM 3's own (1, 288, 288) low-res answer.
        """
        self._check(embedding, TRACKER_KEYS)
        if keep not in ("best", "all"):
            raise ValueError(f"keep must be 'best' or 'all', got {keep!r}")
        if multimask is None:
            multimask = prompt.is_single_click
        h, w = embedding.original_size
        low_res, iou = sam2_style_logits(
            self._tracker, self._click_pe, [self._tensor(embedding, k) for k in TRACKER_KEYS], prompt, (h, w),
            SAM3_RESOLUTION, multimask=multimask, keep=keep,
        )
        # The official post-processing fills small holes of the low-res logits before upscaling.
        masks = self._click_transforms.postprocess_masks(low_res[None], (h, w))[0] > self.mask_threshold
        return Segmentation(
            masks=masks.cpu().numpy(),
            scores=iou.float().cpu().numpy(),
            low_res_logits=torch.clamp(low_res, -32.0, 32.0).float().cpu().numpy(),
        )

    # -- concepts ------------------------------------------------------------------------------------
    def text_features(self, text: str) -> dict[str, torch.Tensor]:
        """The text encoder's outputs for one phrase, computed once per phrase (0.4 s on 2 CPU cores)."""
        with self._text_lock:
            hit = self._text_cache.get(text)
        if hit is not None:
            return hit
        with torch.inference_mode():
            found = self.network.backbone.forward_text([text], device=str(self.device))
        with self._text_lock:
            if len(self._text_cache) >= 256:  # label names and typed phrases: a few; bound it anyway
                self._text_cache.pop(next(iter(self._text_cache)))
            self._text_cache[text] = found
        return found

    @torch.inference_mode()
    def find_instances(self, embedding: Embedding, prompt: ConceptPrompt) -> Instances:
        """Every instance of a phrase and/or exemplar boxes, as the official ``Sam3Processor`` finds them.

        Boxes only: the phrase is the official placeholder "visual". Masks are the detector's logits
        upscaled bilinearly to the image and > 0 (the processor's ``sigmoid > 0.5``).
        """
        self._check(embedding, DETECTOR_KEYS)
        h, w = embedding.original_size
        fpn = [self._tensor(embedding, k) for k in DETECTOR_KEYS]
        backbone_out: dict = {
            "vision_features": fpn[-1],
            "vision_pos_enc": list(self._detector_pos),
            "backbone_fpn": fpn,
        }
        backbone_out.update(self.text_features(prompt.text if prompt.text is not None else "visual"))
        geometric = self.network._get_dummy_prompt()
        if len(prompt.boxes):
            boxes = torch.as_tensor(xyxy_to_unit_cxcywh(prompt.boxes, w, h), device=self.device)
            labels = torch.as_tensor(prompt.box_labels, dtype=torch.bool, device=self.device)
            geometric.append_boxes(boxes.view(-1, 1, 4), labels.view(-1, 1))
        with self._query_lock:
            outputs = self.network.forward_grounding(
                backbone_out=backbone_out, find_input=self._find_stage, geometric_prompt=geometric, find_target=None
            )
        probs = outputs["pred_logits"].sigmoid() * outputs["presence_logit_dec"].sigmoid().unsqueeze(1)
        probs = probs.squeeze(-1)[0]  # (Q,)
        keep = torch.nonzero(probs > prompt.threshold).flatten()
        keep = keep[torch.argsort(probs[keep], descending=True, stable=True)]
        fit = max(1, MAX_INSTANCE_MASK_BYTES // max(1, h * w))
        left_out = max(0, len(keep) - fit)
        if left_out:
            log.warning("SAM 3 found %d instances above score %.3g in a %dx%d image; the best %d are answered, %d "
                        "left out (their masks would take more than %d GiB: raise the threshold)", len(keep),
                        prompt.threshold, w, h, fit, left_out, MAX_INSTANCE_MASK_BYTES >> 30)
            keep = keep[:fit]
        scores = probs[keep].float().cpu().numpy()
        from sam3.model import box_ops

        boxes = box_ops.box_cxcywh_to_xyxy(outputs["pred_boxes"][0, keep])
        boxes = (boxes * torch.tensor([w, h, w, h], device=boxes.device)).float().cpu().numpy()
        logits = outputs["pred_masks"][0, keep]  # (N, 288, 288)
        return Instances(masks=self._instance_masks(logits, (h, w)), boxes=boxes, scores=scores, left_out=left_out)

    def _instance_masks(self, logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """(N, s, s) logits → (N, H, W) bool, bilinear (align_corners=False) and > 0, a few masks at a time."""
        n = int(logits.shape[0])
        masks = np.zeros((n, *size), dtype=bool)
        if self.device.type == "cpu":
            for channel, mask in zip(logits.float(), masks, strict=True):
                upscale_to_mask(channel, size, out=mask)
            return masks
        step = max(1, _MASK_CHUNK_PIXELS // max(1, size[0] * size[1]))
        for start in range(0, n, step):
            part = torch.nn.functional.interpolate(
                logits[start : start + step, None].float(), size, mode="bilinear", align_corners=False
            )
            masks[start : start + step] = (part[:, 0] > 0).cpu().numpy()
        return masks

