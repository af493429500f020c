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


def click_polygons(mask: np.ndarray) -> list[np.ndarray]:
    """Polygons as the click path traces them (default tolerance and minimum area, its caps)."""
    from label_anything.geometry import polygons
    from label_anything.labelstudio.results import MAX_POLYGON_HOLES, MAX_POLYGON_PARTS, OutputOptions

    options = OutputOptions()
    return polygons.mask_to_polygons(mask, tolerance=options.poly_tolerance, min_area=options.poly_min_area,
                                     max_parts=MAX_POLYGON_PARTS, max_holes=MAX_POLYGON_HOLES)


def bench_decode(model, n: int, onnx_ok: bool, sizes: tuple[tuple[int, int], ...] = SIZES) -> dict:
    """In-process warm click at each size: decoder alone (PyTorch vs ONNX Runtime, interleaved), then
    each output step on a realistic object mask and on the random-weight model's fragmented answer."""
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
        # The output steps as the click path runs them, on a realistic object and on the model's own
        # (fragmented) answer.
        for shape, mask in (("object", object_mask(w, h)), ("fragmented", seg.masks[0])):
            outputs = {
                "brush_rle": percentiles(timed(lambda m=mask: brush_rle_encode(m), n)),
                "box": percentiles(timed(lambda m=mask: masks.mask_to_xyxy(m), n)),
                "polygons": percentiles(timed(lambda m=mask: click_polygons(m), n)),
            }
            entry["outputs" if shape == "object" else "outputs_fragmented"] = outputs
        entry["fragmented_mask"] = fragmentation(seg.masks[0])
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


def bench_http(
    model, root: Path, files: dict[tuple[int, int], str], n: int, onnx_ok: bool, *, fragmented: bool = False
) -> dict:
    """Warm click over HTTP (mask + box + polygons), per size and decoder runtime, interleaved.

    ``fragmented=False``: the decoder's logits are swapped for a realistic object's (``SyntheticMaskModel``).
    ``fragmented=True``: the random-weight model's own answer, end to end: a mask of dozens of parts and
    hundreds of holes over most of the image, the worst shape a click meets (foliage, hair, a bad click).
    """
    import httpx

    out: dict[str, Any] = {}
    onnx = model.onnx_decoder if onnx_ok else None
    runtimes = {"torch": None, **({"onnx": onnx} if onnx is not None else {})}
    served = model if fragmented else SyntheticMaskModel(model)
    with serve_backend(served, root) as srv, httpx.Client(timeout=600) as client:
        for (w, h), name in files.items():
            body = click_body(name, w, h, w * 0.5, h * 0.45)
            post(client, srv.url, body)  # first click: encodes and caches; later clicks are warm
            times: dict[str, list[float]] = {k: [] for k in runtimes}
            answer: dict = {}
            for i in range(n + 1):
                for rt, dec in runtimes.items():
                    model.attach_onnx_decoder(dec)
                    t0 = time.perf_counter()
                    answer = post(client, srv.url, body)
                    if i:
                        times[rt].append(time.perf_counter() - t0)
            model.attach_onnx_decoder(onnx)
            result = answer["results"][0]["result"]
            entry: dict[str, Any] = {rt: percentiles(v) for rt, v in times.items()}
            entry["regions"] = len(result)
            if fragmented:
                entry["mask"] = fragmentation(brush_mask(result, w, h))
            out[f"{w}x{h}"] = entry
    return out


def brush_mask(result: list[dict], width: int, height: int) -> np.ndarray:
    """The (H, W) bool mask of the brush region of an answer."""
    from label_anything.labelstudio.rle import brush_rle_decode

    (brush,) = [r for r in result if r["type"] == "brushlabels"]
    return brush_rle_decode(brush["value"]["rle"], height, width)


def fragmentation(mask: np.ndarray) -> dict:
    """How fragmented a mask is: painted fraction, parts (8-connected) and holes (4-connected)."""
    import cv2

    parts = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1
    background = cv2.connectedComponents((~mask).astype(np.uint8), connectivity=4)[0] - 1
    return {"fraction": round(float(mask.mean()), 3), "parts": int(parts), "unpainted_areas": int(background)}


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


def bench_convert(shapes: dict[str, np.ndarray], folder: Path, n: int, tasks: int = 4) -> dict:
    """``convert`` of an export of ``tasks`` tasks, each with one brush region of a shape: ms per mask per format.

    ``shapes``: name → (H, W) bool mask (a smooth object, a fragmented model answer, speckle ...). The export
    is parsed, every mask decoded from brush RLE and written in each format, as ``label-anything convert`` does.
    """
    import json

    from label_anything.app.convert.dataset import convert
    from label_anything.app.convert.images import ImageLocator
    from label_anything.labelstudio.rle import brush_rle_encode

    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {}
    for name, mask in shapes.items():
        h, w = mask.shape
        region = {"id": "b1", "type": "brushlabels", "from_name": "brush", "to_name": "image",
                  "original_width": w, "original_height": h, "image_rotation": 0,
                  "value": {"format": "rle", "rle": brush_rle_encode(mask), "brushlabels": ["object"]}}
        export = folder / f"export-{name}.json"
        export.write_text(json.dumps([
            {"id": t + 1, "data": {"image": f"/data/upload/1/{name}-{t}.png"},
             "annotations": [{"id": t + 1, "result": [region]}]} for t in range(tasks)
        ]))
        entry: dict[str, Any] = {"size": f"{w}x{h}", **fragmentation(mask)}
        for fmt in ("coco-rle", "coco-polygon", "yolo-seg"):
            locator = ImageLocator(upload_dir=folder / "no-uploads", download=False)

            def run(fmt=fmt, locator=locator, export=export) -> None:
                result = convert(export, folder / f"out-{fmt}", fmt=fmt, locator=locator, copy_images=False,
                                 progress=False)
                assert result.n_annotations == tasks, result.summary()

            entry[fmt] = percentiles([s / tasks for s in timed(run, n)])
        out[name] = entry
    return out


def bench_heavy_task(model, root: Path, n: int, regions: int = 50, size: tuple[int, int] = (3000, 2000)) -> dict:
    """The click's cost of what Label Studio sends with it: every annotation and draft of the task.

    The same warm click on the same image, its task carrying nothing vs ``regions`` brush regions (realistic
    object masks) in an annotation and in a draft, interleaved; the difference is the cost of the request's
    size (network, JSON parsing) that the answer does not need.
    """
    import httpx
    from PIL import Image

    from label_anything.labelstudio.rle import brush_rle_encode

    w, h = size
    name = f"heavy-{w}x{h}.jpg"
    Image.fromarray(scene(w, h, seed=7)).save(root / name, quality=92)
    light = click_body(name, w, h, w * 0.5, h * 0.45)
    shifts = np.linspace(-0.3, 0.3, regions)
    stored = []
    for k, shift in enumerate(shifts):
        mask = np.roll(object_mask(w, h), int(shift * w), axis=1)
        stored.append({"id": f"r{k}", "type": "brushlabels", "from_name": "brush", "to_name": "image",
                       "original_width": w, "original_height": h, "image_rotation": 0,
                       "value": {"format": "rle", "rle": brush_rle_encode(mask), "brushlabels": ["object"]}})
    heavy = {**light, "tasks": [{**light["tasks"][0], "annotations": [{"id": 1, "result": stored}],
                                 "drafts": [{"id": 2, "result": stored}]}]}
    import json

    # Encoded once: Label Studio's encoding is not the backend's cost.
    bodies = {"light": json.dumps(light).encode(), "heavy": json.dumps(heavy).encode()}
    sizes = {k: len(b) for k, b in bodies.items()}
    times: dict[str, list[float]] = {k: [] for k in bodies}
    with serve_backend(SyntheticMaskModel(model), root) as srv, httpx.Client(timeout=600) as client:
        post(client, srv.url, light)  # encodes and caches
        for i in range(n + 1):
            for k, body in bodies.items():
                t0 = time.perf_counter()
                post(client, srv.url, body)
                if i:
                    times[k].append(time.perf_counter() - t0)
    out: dict[str, Any] = {"size": f"{w}x{h}", "regions": regions,
                           "body_bytes": sizes, **{k: percentiles(v) for k, v in times.items()}}
    out["added_ms"] = round(out["heavy"]["p50_ms"] - out["light"]["p50_ms"], 1)
    return out
