"""The prompt encoder + mask decoder of a SAM / MobileSAM model as an ONNX Runtime session.

Why: on a small CPU the decoder is the floor of every click (design.md, "Keep the click path lean").
ONNX Runtime fuses the decoder's many small ops, which PyTorch's eager mode runs one by one.

What is exported: prompts (already in the model's 1024-frame coordinates, like the official
``SamOnnxModel``) → the decoder's four low-res logits (1, 4, 256, 256) and four IoU scores. Choosing
candidates and upscaling stay in PyTorch (``postprocess_masks``), so both paths share every step after
the decoder. Our own export code: it mirrors ``PromptEncoder._embed_points/_embed_boxes/_embed_masks``
with tensor arithmetic instead of in-place boolean indexing, which tracing cannot follow.

Exported graphs are cached on disk under ``<cache>/onnx/<model id>.onnx`` (the model id includes the
weights digest, so other weights never reuse a graph). SAM-HQ is not covered: its decoder needs the
precomputed HQ features; it keeps the PyTorch path.

A session is attached to a loaded ``SamModel`` with ``SamModel.attach_onnx_decoder`` (``enable_onnx_decoder``,
``choose_decoder``: a loading step). The point list both decoders share is ``sam_inputs.sam_point_inputs``,
so ``sam`` never imports this module: the import goes one way.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from label_anything.engine.sam import SamModel

log = logging.getLogger(__name__)

OPSET = 17


def onnx_available() -> bool:
    """True when ``onnxruntime`` and ``onnx`` (needed by the exporter) can be imported."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class _DecoderGraph(torch.nn.Module):
    """Traceable prompt encoder + mask decoder of one SAM network (no image encoder, no upscaling).

    Inputs: ``image_embeddings`` (1, 256, 64, 64); ``point_coords`` (1, N, 2) in the 1024 frame;
    ``point_labels`` (1, N) float: 1 positive, 0 negative, 2/3 box corners, -1 padding point;
    ``mask_input`` (1, 1, 256, 256); ``has_mask_input`` (1,) 0 or 1.
    """

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.prompt_encoder = network.prompt_encoder
        self.mask_decoder = network.mask_decoder
        # The dense positional encoding depends only on the weights: baked in as a constant.
        self.register_buffer("image_pe", network.prompt_encoder.get_dense_pe().detach().clone())

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pe = self.prompt_encoder
        coords = (coords + 0.5) / float(pe.input_image_size[0])  # the official shift to pixel centres
        embedding = pe.pe_layer._pe_encoding(coords)
        labels = labels.unsqueeze(-1)
        embedding = embedding * (labels != -1).to(embedding.dtype)
        embedding = embedding + pe.not_a_point_embed.weight * (labels == -1).to(embedding.dtype)
        for i in range(pe.num_point_embeddings):
            embedding = embedding + pe.point_embeddings[i].weight * (labels == i).to(embedding.dtype)
        return embedding

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pe = self.prompt_encoder
        sparse = self._embed_points(point_coords, point_labels)
        has = has_mask_input.reshape(1, 1, 1, 1)
        dense = has * pe.mask_downscaling(mask_input) + (1 - has) * pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        masks, iou = self.mask_decoder.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=self.image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )
        return masks, iou


def export_decoder(network: torch.nn.Module, path: Path) -> Path:
    """Export ``network``'s prompt encoder + mask decoder to ``path`` (atomic: temp file + rename)."""
    graph = _DecoderGraph(network).eval()
    args = (
        torch.zeros(1, 256, 64, 64),
        torch.zeros(1, 2, 2),
        torch.tensor([[1.0, -1.0]]),
        torch.zeros(1, 1, 256, 256),
        torch.zeros(1),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".onnx")
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The tracer warns about Python floats in the attention scale: constants, as intended.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                args,
                tmp,
                input_names=["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"],
                output_names=["low_res_masks", "iou_predictions"],
                dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,  # the TorchScript exporter: no onnxscript dependency
            )
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


class OnnxDecoder:
    """An ONNX Runtime session running one model's prompt encoder + mask decoder.

    Args:
        network: the loaded SAM / MobileSAM network (weights already in place).
        path: where the exported graph is (or will be) cached.
        threads: intra-op threads for ONNX Runtime; 0 = as many as PyTorch uses (``torch.get_num_threads()``:
            one per core by default, OMP_NUM_THREADS when set, each worker's share under ``serve --workers N``).
    """

    def __init__(self, network: torch.nn.Module, path: Path, threads: int = 0) -> None:
        import onnxruntime as ort

        if not path.is_file():
            log.info("exporting the decoder to ONNX: %s", path)
            export_decoder(network, path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # ONNX Runtime's own default is every core whatever the process was given: N workers would each
        # run one thread per core. PyTorch's count is the one place that share is decided.
        options.intra_op_num_threads = threads or torch.get_num_threads()
        # Within a run the decoder hands dozens of small ops to the pool one after the other: workers that
        # spin between them, instead of sleeping and waking, make a click ~15 % faster. After the run they
        # must not spin on (ONNX Runtime's default): on a small shared CPU that steals the cores the
        # background encoder and the next request's image decoding need. force_spinning_stop puts them
        # to sleep as soon as a run ends.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        options.add_session_config_entry("session.force_spinning_stop", "1")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path = path

    def run(
        self,
        features: np.ndarray,
        coords: np.ndarray,
        labels: np.ndarray,
        mask_input: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(1, 4, 256, 256) low-res logits and (1, 4) IoU of all four mask tokens.

        ``coords`` (N, 2) in the 1024 frame and ``labels`` (N,) must already carry box corners
        (labels 2, 3) or the padding point (label -1), see ``sam_inputs.sam_point_inputs``.
        """
        has_mask = mask_input is not None
        feeds = {
            "image_embeddings": np.ascontiguousarray(features, dtype=np.float32),
            "point_coords": coords.astype(np.float32)[None],
            "point_labels": labels.astype(np.float32)[None],
            "mask_input": (mask_input if has_mask else np.zeros((1, 256, 256))).astype(np.float32)[None],
            "has_mask_input": np.array([1.0 if has_mask else 0.0], dtype=np.float32),
        }
        masks, iou = self.session.run(None, feeds)
        return masks, iou


def onnx_cache_path(model_id: str, cache_dir: Path | None = None) -> Path:
    """Where the exported decoder of ``model_id`` lives: ``<cache>/onnx/<model id>-opset<N>.onnx``."""
    from label_anything.engine.weights import default_cache_dir

    return Path(cache_dir or default_cache_dir()) / "onnx" / f"{model_id}-opset{OPSET}.onnx"


def enable_onnx_decoder(model, cache_dir: Path | None = None, threads: int = 0) -> bool:
    """Switch a loaded ``SamModel`` to the ONNX Runtime decoder; False (and a log line) when it cannot.

    SAM-HQ, non-CPU devices and a missing ``onnxruntime`` keep the PyTorch decoder.
    """
    if not isinstance(model, SamModel) or model.arch.hq or model.device.type != "cpu":
        log.info("ONNX decoder: not for %s on %s; keeping PyTorch", model.info.model_id, model.info.device)
        return False
    if not onnx_available():
        log.info("ONNX decoder: onnxruntime/onnx not installed (pip install 'label-anything[onnx]'); keeping PyTorch")
        return False
    model.attach_onnx_decoder(OnnxDecoder(model.network, onnx_cache_path(model.info.model_id, cache_dir), threads))
    return True


def disable_onnx_decoder(model) -> None:
    """Back to the PyTorch decoder."""
    if isinstance(model, SamModel):
        model.attach_onnx_decoder(None)
    else:  # SAM 2 keeps an always-None ``onnx_decoder`` for symmetry
        model.onnx_decoder = None


def choose_decoder(model, decoder: str = "auto", cache_dir: Path | None = None, trials: int = 5) -> str:
    """Apply ``decoder`` ("torch", "onnx" or "auto") to a loaded model; returns the one in use.

    "auto" times both decoders side by side, interleaved (so a busy machine slows both alike), on a
    dummy embedding and keeps ONNX Runtime only when its median is lower.
    """
    if decoder not in ("auto", "torch", "onnx"):
        raise ValueError(f"decoder must be auto, torch or onnx, got {decoder!r}")
    if decoder == "torch" or not enable_onnx_decoder(model, cache_dir):
        disable_onnx_decoder(model)
        return "torch"
    if decoder == "onnx":
        return "onnx"
    torch_ms, onnx_ms = compare_decoders(model, trials)
    if onnx_ms < torch_ms:
        log.info("decoder: ONNX Runtime (%.1f ms) over PyTorch (%.1f ms)", onnx_ms, torch_ms)
        return "onnx"
    log.info("decoder: PyTorch (%.1f ms) over ONNX Runtime (%.1f ms)", torch_ms, onnx_ms)
    disable_onnx_decoder(model)
    return "torch"


def compare_decoders(model, trials: int = 5) -> tuple[float, float]:
    """Median ms of one click's decode with PyTorch and with ONNX Runtime, interleaved.

    Needs ``model.onnx_decoder`` set; leaves it set.
    """
    import time

    from label_anything.engine.prompts import Prompt
    from label_anything.engine.types import Embedding

    onnx = model.onnx_decoder
    assert onnx is not None
    rng = np.random.default_rng(0)
    embedding = Embedding(
        model.info.model_id, "dummy", (768, 1024), (768, 1024),
        {"features": rng.standard_normal((1, 256, 64, 64)).astype(np.float32)},
    )
    prompt = Prompt.from_lists([(512.0, 384.0)])
    times: dict[str, list[float]] = {"torch": [], "onnx": []}
    for i in range(trials + 1):
        for name, dec in (("torch", None), ("onnx", onnx)):
            model.attach_onnx_decoder(dec)
            t0 = time.perf_counter()
            model.decode(embedding, prompt)
            if i:  # the first round warms both up
                times[name].append(time.perf_counter() - t0)
    model.attach_onnx_decoder(onnx)
    return float(np.median(times["torch"]) * 1e3), float(np.median(times["onnx"]) * 1e3)
