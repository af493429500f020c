"""The benchmark's sections: each measures one part of the click path and returns a JSON-able dict."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from label_anything.benchmark.clicks import click_body, open_body, post, serve_backend
from label_anything.benchmark.synthetic import (
    SIZES,
    SyntheticMaskModel,
    load_random_model,
    object_logits,
    object_mask,
    scene,
)
from label_anything.benchmark.timing import percentiles, timed


def bench_encoder(models: dict[str, Any], n: int, warmup: int = 1) -> dict:
    """Encoder time per 1024×768 image, per model; PyTorch is the only encoder runtime we support."""
    from label_anything.engine import encode

    image = scene(1024, 768)
    out = {}
    for name, model in models.items():
        out[name] = {"torch": percentiles(timed(lambda m=model: encode(m, image, "bench"), n, warmup=warmup))}
    return out


OTHER_MODELS: dict[str, tuple[str, str]] = {
    "sam_vit_b": ("sam", "vit_b"),
    "sam2.1_tiny": ("sam2", "tiny"),
    "sam2.1_small": ("sam2", "small"),
}
"""Models measured beside MobileSAM (encoder time and warm click at 1024×768): ``--models`` picks them."""


def bench_models(names: tuple[str, ...], folder: Path, root: Path, file_name: str, n: int, n_encode: int) -> dict:
    """Per model of ``OTHER_MODELS``: encoder time, and the warm click over HTTP on a 1024×768 photo.

    One model is loaded at a time (SAM 2.1 small and vit_b hold hundreds of MB each). PyTorch decoders.
    """
    import httpx

    from label_anything.engine import encode

    image = scene(1024, 768)
    out: dict[str, Any] = {}
    for name in names:
        family, config = OTHER_MODELS[name]
        model = load_random_model(family, config, folder)
        entry: dict[str, Any] = {"model": f"{family} {config}"}
        entry["encoder"] = percentiles(timed(lambda m=model: encode(m, image, "bench"), n_encode, warmup=0))
        with serve_backend(SyntheticMaskModel(model), root) as srv, httpx.Client(timeout=600) as client:
            body = click_body(file_name, 1024, 768, 1024 * 0.5, 768 * 0.45)
            post(client, srv.url, body)  # encodes and caches
            entry["http_click_1024x768"] = percentiles(timed(lambda b=body: post(client, srv.url, b), n, warmup=1))
        out[name] = entry
        del model
    return out


def bench_decode(
    model, n: int, onnx_ok: bool, sizes: tuple[tuple[int, int], ...] = SIZES, raw_polygons: bool = True
) -> dict:
    """In-process warm click at each size: decoder alone (PyTorch vs ONNX Runtime, interleaved), then
    each output step on the synthetic object mask (and polygons on the raw random-weight mask)."""
    from label_anything.engine import Prompt, decode, encode
    from label_anything.geometry import masks
    from label_anything.labelstudio.rle import brush_rle_encode

    out: dict[str, Any] = {}
    onnx = model.onnx_decoder if onnx_ok else None
    for w, h in sizes:
        embedding = encode(model, scene(w, h), f"bench-{w}x{h}")
        prompt = Prompt.from_lists([(w * 0.5, h * 0.45)])
        runtimes = {"torch": None, **({"onnx": onnx} if onnx is not None else {})}
        times: dict[str, list[float]] = {k: [] for k in runtimes}
        for i in range(n + 1):  # interleaved: a load spike hits both runtimes alike
            for name, dec in runtimes.items():
                model.attach_onnx_decoder(dec)
                t0 = time.perf_counter()
                seg = decode(model, embedding, prompt)
                if i:
                    times[name].append(time.perf_counter() - t0)
        model.attach_onnx_decoder(onnx)
        entry: dict[str, Any] = {f"decode_{k}": percentiles(v) for k, v in times.items()}
        if hasattr(model, "masks_from_low_res"):
            entry["upscale"] = bench_upscale(model, embedding, n)
        mask = object_mask(w, h)
        entry["brush_rle"] = percentiles(timed(lambda m=mask: brush_rle_encode(m), n))
        entry["box"] = percentiles(timed(lambda m=mask: masks.mask_to_xyxy(m), n))
        entry["polygons"] = percentiles(timed(lambda m=mask: masks.mask_to_polygons(m, tolerance=1.0, min_area=16), n))
        raw = seg.masks[0]
        t0 = time.perf_counter()
        small = raw_polygons and w * h <= 1024 * 768
        parts = masks.mask_to_polygons(raw, tolerance=1.0, min_area=16) if small else None
        entry["outputs_on_random_mask"] = {
            "mask_fraction": round(float(raw.mean()), 3),
            "polygon_ms": round((time.perf_counter() - t0) * 1e3, 1) if parts is not None else None,
            "polygon_parts": len(parts) if parts is not None else None,
            "note": "random weights give fragmented masks; polygons skipped above 1024x768",
        }
        out[f"{w}x{h}"] = entry
    return out


def bench_upscale(model, embedding, n: int) -> dict:
    """Low-res logits of a realistic object → full-size mask: ours (``masks_from_low_res``, the painted
    window only) vs the official ``postprocess_masks(...) > 0``, interleaved; and whether they agree."""
    import torch

    logits = torch.from_numpy(object_logits(embedding.input_size))
    net = model.network

    def official() -> np.ndarray:
        with torch.inference_mode():
            up = net.postprocess_masks(logits[None], embedding.input_size, embedding.original_size)[0]
            return (up > net.mask_threshold).numpy()

    def ours() -> np.ndarray:
        return model.masks_from_low_res(logits, embedding)

    times: dict[str, list[float]] = {"ours": [], "official": []}
    for i in range(n + 1):
        for name, fn in (("ours", ours), ("official", official)):
            t0 = time.perf_counter()
            fn()
            if i:
                times[name].append(time.perf_counter() - t0)
    return {**{k: percentiles(v) for k, v in times.items()}, "same_mask": bool(np.array_equal(ours(), official()))}


def bench_http(model, root: Path, files: dict[tuple[int, int], str], n: int, onnx_ok: bool) -> dict:
    """Warm click over HTTP (mask + box + polygons), per size and decoder runtime, interleaved."""
    import httpx

    out: dict[str, Any] = {}
    onnx = model.onnx_decoder if onnx_ok else None
    runtimes = {"torch": None, **({"onnx": onnx} if onnx is not None else {})}
    with serve_backend(SyntheticMaskModel(model), root) as srv, httpx.Client(timeout=600) as client:
        for (w, h), name in files.items():
            body = click_body(name, w, h, w * 0.5, h * 0.45)
            post(client, srv.url, body)  # first click: encodes and caches; later clicks are warm
            times: dict[str, list[float]] = {k: [] for k in runtimes}
            regions = 0
            for i in range(n + 1):
                for rt, dec in runtimes.items():
                    model.attach_onnx_decoder(dec)
                    t0 = time.perf_counter()
                    answer = post(client, srv.url, body)
                    if i:
                        times[rt].append(time.perf_counter() - t0)
                    regions = len(answer["results"][0]["result"])
            model.attach_onnx_decoder(onnx)
            out[f"{w}x{h}"] = {**{rt: percentiles(v) for rt, v in times.items()}, "regions": regions}
    return out


def bench_naive(model, root: Path, files: dict[tuple[int, int], str], n: int) -> dict:
    """The same click with no embedding cache (the original playground's way): encode on every click."""
    import httpx

    out = {}
    with serve_backend(SyntheticMaskModel(model), root, cache_bytes=0, prefetch=False) as srv, \
            httpx.Client(timeout=600) as client:
        for (w, h), name in files.items():
            body = click_body(name, w, h, w * 0.5, h * 0.45)
            out[f"{w}x{h}"] = percentiles(timed(lambda b=body: post(client, srv.url, b), n, warmup=0))
        # Proof that every click encoded: a zero-budget cache keeps nothing.
        assert len(srv.backend.cache) == 0, "the naive server cached an embedding"
    return out


def bench_first_click(model, root: Path, encoder_s: float, trials: int) -> dict:
    """First click on a task opened ``delay`` earlier (1.5 × one encoder time), prefetch on and off.

    Each trial uses a fresh image (new content digest), so nothing is cached before the task opens.
    """
    import httpx
    from PIL import Image

    delay = 1.5 * encoder_s
    w, h = 1024, 768
    out: dict[str, Any] = {"opened_ms_before_click": round(delay * 1e3)}
    for prefetch in (True, False):
        samples = []
        with serve_backend(SyntheticMaskModel(model), root, prefetch=prefetch) as srv, \
                httpx.Client(timeout=600) as client:
            for t in range(trials):
                name = f"first-{int(prefetch)}-{t}.png"
                Image.fromarray(scene(w, h, seed=100 + 10 * t + int(prefetch))).save(root / name)
                post(client, srv.url, open_body(name, 100 + t))
                time.sleep(delay)
                t0 = time.perf_counter()
                post(client, srv.url, click_body(name, w, h, w * 0.5, h * 0.45, 100 + t))
                samples.append(time.perf_counter() - t0)
                srv.backend.wait_for_prefetch(120)
        out["with_prefetch" if prefetch else "without_prefetch"] = percentiles(samples)
    return out


def bench_precompute(model, folder: Path, count: int) -> dict:
    """``precompute`` over a folder of 1024×768 images into a fresh disk cache: images/s, bytes each."""
    import shutil

    from PIL import Image

    from label_anything.app.precompute import folder_images, precompute
    from label_anything.engine.cache import EmbeddingCache

    shutil.rmtree(folder, ignore_errors=True)  # a kept --workdir must not start with a warm cache
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(scene(1024, 768, seed=1000 + i)).save(images / f"img{i:03d}.png")
    cache = EmbeddingCache(max_memory_bytes=64 * 2**20, disk_dir=folder / "embeddings")
    t0 = time.perf_counter()
    report = precompute(model, folder_images(images), cache, progress=False)
    wall = time.perf_counter() - t0
    files = list((folder / "embeddings").glob("*/*.npz"))
    sizes = [f.stat().st_size for f in files]
    again = precompute(model, folder_images(images), cache, progress=False)
    return {
        "images": count,
        "images_per_s_encoding": round(report.images_per_s, 3),
        "images_per_s_wall": round(report.encoded / wall, 3),
        "bytes_per_embedding_on_disk": int(np.mean(sizes)) if sizes else 0,
        "dtype": np.dtype(cache.dtype).name,
        "second_run_encoded": again.encoded,
    }


def bench_rle(n: int, sdk_n: int, size: tuple[int, int] = (4000, 3000)) -> dict:
    """Brush RLE of a 4000×3000 object mask: ours vs label_studio_sdk's encoder, same mask."""
    from label_anything.labelstudio.rle import brush_rle_encode

    mask = object_mask(*size)
    ours = percentiles(timed(lambda: brush_rle_encode(mask), n))
    out: dict[str, Any] = {"size": f"{size[0]}x{size[1]}", "ours": ours}
    try:
        from label_studio_sdk.converter.brush import encode_rle
    except ImportError:
        out["label_studio_sdk"] = None
        return out

    def sdk() -> list[int]:
        # The SDK takes the flat RGBA buffer; building it is part of its cost, as in its own mask2rle.
        return encode_rle(np.repeat(mask.astype(np.uint8) * 255, 4))

    out["label_studio_sdk"] = percentiles(timed(sdk, sdk_n, warmup=0))
    out["same_output"] = list(sdk()) == list(brush_rle_encode(mask))
    return out
