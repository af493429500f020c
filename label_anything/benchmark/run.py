"""The benchmark's driver: every section in one process, one after the other (see the package docstring)."""

from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path
from typing import Any

from label_anything.benchmark.report import ratios
from label_anything.benchmark.sam3 import bench_sam3, sam3_available
from label_anything.benchmark.sections import (
    OTHER_MODELS,
    bench_convert,
    bench_decode,
    bench_encoder,
    bench_first_click,
    bench_heavy_task,
    bench_http,
    bench_models,
    bench_naive,
    bench_precompute,
    bench_rle,
)
from label_anything.benchmark.synthetic import (
    RANDOM_WEIGHTS_NOTE,
    SIZES,
    load_random_model,
    object_mask,
    scene,
    speckle_mask,
)
from label_anything.benchmark.timing import load_average, module_version


def run_bench(
    quick: bool = False,
    workdir: Path | None = None,
    decoder: str = "auto",
    sizes: tuple[tuple[int, int], ...] = SIZES,
    rle_size: tuple[int, int] = (4000, 3000),
    models: tuple[str, ...] | None = None,
    heavy_size: tuple[int, int] = (3000, 2000),
) -> dict:
    """Run every section; returns the JSON-able result. ``sizes`` / ``rle_size`` / ``heavy_size``: smaller in
    tests.

    ``models``: names from ``OTHER_MODELS`` and ``sam3`` to measure beside MobileSAM; None = all of them (SAM 3
    when its package is installed; none when quick).
    """
    import torch

    from label_anything.engine.onnx_decoder import enable_onnx_decoder, onnx_available

    n = 3 if quick else 20
    results: dict[str, Any] = {
        "meta": {
            "weights": RANDOM_WEIGHTS_NOTE,
            "masks": "HTTP/output sections upscale a realistic object's logits after the real decoder network "
                     "(see module doc)",
            "quick": quick,
            "load_average_start": load_average(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
        }
    }
    with tempfile.TemporaryDirectory(prefix="label-anything-bench-") as tmp:
        work = Path(workdir) if workdir else Path(tmp)
        ckpts = work / "checkpoints"
        mobile = load_random_model("mobile_sam", "vit_t", ckpts)
        onnx_ok = decoder != "torch" and onnx_available() and enable_onnx_decoder(mobile, work / "cache")
        if not onnx_ok:
            mobile.attach_onnx_decoder(None)
        results["meta"]["onnxruntime"] = module_version("onnxruntime") if onnx_ok else None
        results["encoder"] = bench_encoder({"mobile_sam": mobile}, 1 if quick else 2, warmup=0 if quick else 1)
        results["decode"] = bench_decode(mobile, n, onnx_ok, sizes)
        root = work / "files"
        root.mkdir(parents=True, exist_ok=True)
        files = {}
        from PIL import Image

        for w, h in sizes:
            name = f"photo-{w}x{h}.jpg"
            Image.fromarray(scene(w, h)).save(root / name, quality=92)
            files[(w, h)] = name
        results["http"] = bench_http(mobile, root, files, n, onnx_ok)
        results["http_fragmented"] = bench_http(mobile, root, files, n, onnx_ok, fragmented=True)
        results["heavy_task"] = bench_heavy_task(mobile, root, n, 10 if quick else 50, heavy_size)
        # The server answers with whichever decoder is faster here (what `auto` would pick).
        results["naive"] = bench_naive(mobile, root, files, 1 if quick else 3)
        encoder_s = results["encoder"]["mobile_sam"]["torch"]["p50_ms"] / 1e3
        results["first_click"] = bench_first_click(mobile, root, encoder_s, 1 if quick else 3)
        results["precompute"] = bench_precompute(mobile, work / "precompute", 2 if quick else 4)
        results["rle"] = bench_rle(n, 1 if quick else 3, rle_size)
        w, h = sizes[0]
        shapes = {
            "object": object_mask(w, h),
            "fragmented": fragmented_answer(mobile, w, h),
            "speckle": speckle_mask(w, h),
        }
        results["convert"] = bench_convert(shapes, work / "convert", 2 if quick else 5)
        default = (*OTHER_MODELS, "sam3") if sam3_available() else tuple(OTHER_MODELS)
        chosen = (() if quick else default) if models is None else models
        others = tuple(m for m in chosen if m != "sam3")
        if others:
            photo = "photo-1024x768.jpg"
            Image.fromarray(scene(1024, 768)).save(root / photo, quality=92)
            results["models"] = bench_models(others, ckpts, root, photo, 3 if quick else 10, 1 if quick else 2)
        if "sam3" in chosen:  # last: 3.4 GB of weights, minutes on a CPU
            results["sam3"] = bench_sam3(ckpts, 2 if quick else 5, 1 if quick else 2)
    results["ratios"] = ratios(results)
    results["meta"]["load_average_end"] = load_average()
    return results


def fragmented_answer(model, width: int, height: int):
    """The random-weight model's own mask for the bench's click on a ``width`` x ``height`` scene."""
    from label_anything.engine import Prompt, decode, encode

    embedding = encode(model, scene(width, height), f"fragmented-{width}x{height}")
    return decode(model, embedding, Prompt.from_lists([(width * 0.5, height * 0.45)])).masks[0]
