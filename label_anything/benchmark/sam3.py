"""SAM 3's rows of the benchmark: encode, a concept query (where its time goes), exemplars, a click.

A random-weight checkpoint of the real architecture (``label_anything.testing.sam3_checkpoint``, 3.4 GB,
built once into the bench's checkpoint folder) loaded through ``load_model``. Random weights score every
query ~0.3; the query keeps all 200 instances (threshold 0), the worst case of the mask step.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from label_anything.benchmark.synthetic import scene
from label_anything.benchmark.timing import percentiles, timed


def sam3_available() -> bool:
    """True when the ``[sam3]`` extra is installed (looked up, not imported: importing it is slow and noisy)."""
    import importlib.util

    return importlib.util.find_spec("sam3") is not None


def bench_sam3(folder: Path, n: int, n_encode: int) -> dict[str, Any]:
    """Encoder, concept query (text cached / not), exemplar query and click on a 1024×768 scene."""
    import torch

    from label_anything.engine import Prompt, encode, load_model
    from label_anything.engine.cache import embedding_to_bytes, to_storage_dtype
    from label_anything.engine.concepts import ConceptPrompt
    from label_anything.testing.sam3_checkpoint import build_random_sam3_checkpoint

    path = folder / "random-sam3-0.pt"
    if not path.is_file():
        build_random_sam3_checkpoint(path, seed=0)
    t0 = time.perf_counter()
    model = load_model("sam3", checkpoint=path, device="cpu")
    out: dict[str, Any] = {"load_s": round(time.perf_counter() - t0, 1)}
    image = scene(1024, 768)
    embedding = None

    def run_encode() -> None:
        nonlocal embedding
        embedding = encode(model, image, "bench-sam3")

    out["encoder"] = percentiles(timed(run_encode, n_encode, warmup=0))
    assert embedding is not None
    stored = to_storage_dtype(embedding)
    out["embedding_bytes"] = {"memory_float16": stored.nbytes, "disk_npz": len(embedding_to_bytes(stored))}
    every = ConceptPrompt(text="cat", threshold=0.0)

    def text_cold() -> None:
        model._text_cache.clear()
        model.find_instances(embedding, every)

    out["concept_query"] = percentiles(timed(lambda: model.find_instances(embedding, every), n, warmup=1))
    out["concept_query_new_phrase"] = percentiles(timed(text_cold, max(1, n // 2), warmup=0))
    with torch.inference_mode():
        out["text_encoding"] = percentiles(timed(lambda: model.network.backbone.forward_text(["cat"], device="cpu"),
                                                 n, warmup=0))
    masks = model.find_instances(embedding, every)
    out["instances"] = len(masks)
    exemplar = ConceptPrompt.from_lists(boxes=[(400, 250, 620, 520)], threshold=0.0)
    out["exemplar_query"] = percentiles(timed(lambda: model.find_instances(embedding, exemplar), n, warmup=1))
    click = Prompt.from_lists(points=[(512, 345)])
    out["click"] = percentiles(timed(lambda: model.decode(embedding, click), n, warmup=1))
    logits = _logits(model, embedding, every)
    out["upscale_200_masks"] = percentiles(timed(lambda: model._instance_masks(logits, (768, 1024)), n, warmup=0))
    out["detector_forward"] = percentiles(timed(lambda: _logits(model, embedding, every), n, warmup=0))
    return out


def _logits(model, embedding, prompt):
    """The detector's (200, 288, 288) mask logits for ``prompt`` (to time the upscaling step alone)."""
    import torch

    from label_anything.engine.sam3 import DETECTOR_KEYS

    with torch.inference_mode():
        fpn = [torch.from_numpy(embedding.arrays[k]) for k in DETECTOR_KEYS]
        backbone_out = {"vision_features": fpn[-1], "vision_pos_enc": list(model._detector_pos), "backbone_fpn": fpn}
        backbone_out.update(model.text_features(prompt.text))
        outputs = model.network.forward_grounding(backbone_out=backbone_out, find_input=model._find_stage,
                                                  geometric_prompt=model.network._get_dummy_prompt(),
                                                  find_target=None)
        return outputs["pred_masks"][0]


def sam3_rows(e: dict[str, Any]) -> list[tuple[str, str]]:
    """The printed table's SAM 3 rows."""
    return [
        ("sam3: encoder 1024x768 p50", f"{e['encoder']['p50_ms'] / 1e3:.1f} s"),
        (f"sam3: concept query ({e['instances']} instances) p50, phrase seen / new",
         f"{e['concept_query']['p50_ms']:.0f} / {e['concept_query_new_phrase']['p50_ms']:.0f} ms"),
        ("  sam3: of which detector / mask upscaling (200 masks); a new phrase's text encoding",
         f"{e['detector_forward']['p50_ms']:.0f} / {e['upscale_200_masks']['p50_ms']:.0f}; "
         f"{e['text_encoding']['p50_ms']:.0f} ms"),
        ("sam3: exemplar box query p50", f"{e['exemplar_query']['p50_ms']:.0f} ms"),
        ("sam3: click p50", f"{e['click']['p50_ms']:.0f} ms"),
        ("sam3: embedding in memory (float16) / on disk",
         f"{e['embedding_bytes']['memory_float16'] / 1e6:.1f} / {e['embedding_bytes']['disk_npz'] / 1e6:.1f} MB"),
    ]
