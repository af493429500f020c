"""``label-anything bench``: the click path's numbers on this machine, measured side by side in one run.

Everything runs in one process, one section after the other, so ratios compare like with like; the load
average before and after is recorded because a busy machine slows everything (report it with numbers).

Models use **random-weight checkpoints of the real architectures** (built with the official packages and
loaded through ``load_model``, like a downloaded one): timing does not depend on weight values. Mask
*shapes* do: random weights give fragmented masks (hundreds of parts, holes), on which upscaling and
polygon extraction cost far more than on a real object. So the HTTP sections run the real decoder network,
then swap its logits for those of a realistic object (an ellipse with a hole, ~15 % of the image), which
the model's own code upscales and the output stage turns into regions; the raw random-weight mask's
polygon time is reported separately (``decode.*.outputs_on_random_mask``).

Sections: encoder, decode (PyTorch and ONNX Runtime), http (warm click), naive (encode on every click),
first_click (task opened earlier, with and without prefetch), precompute, rle (ours vs label_studio_sdk),
models (SAM vit_b, SAM 2.1 tiny and small: encoder and warm click).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

RANDOM_WEIGHTS_NOTE = (
    "random-weight checkpoints of the real architectures (official package builders, loaded through "
    "load_model); timing does not depend on weight values"
)
SIZES = ((1024, 768), (4000, 3000))


# -- helpers -----------------------------------------------------------------------------------------
def percentiles(samples_s: list[float]) -> dict[str, float]:
    """p50 / p95 / mean in milliseconds, and the sample count."""
    ms = np.asarray(samples_s) * 1e3
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "mean_ms": round(float(ms.mean()), 2),
        "n": len(ms),
    }


def timed(fn: Callable[[], Any], n: int, warmup: int = 1) -> list[float]:
    """Seconds of ``n`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def scene(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A photo-like RGB test image: smooth gradient, a few filled shapes, mild noise (seed varies it)."""
    import cv2

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([80 + 80 * x / width, 120 + 60 * y / height, 190 - 60 * x / width], axis=-1)
    img = img.astype(np.uint8)
    s = min(width, height)
    cv2.ellipse(img, (width // 2, int(height * 0.45)), (width // 5, height // 4), 15, 0, 360, (200, 80, 40), -1)
    cv2.circle(img, (width // 5, height // 4), s // 8, (30, 160, 60), -1)
    cv2.rectangle(img, (int(width * 0.7), int(height * 0.6)), (int(width * 0.9), int(height * 0.9)), (240, 230, 50), -1)
    noise = rng.integers(0, 12, size=img.shape, dtype=np.uint8)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def object_mask(width: int, height: int) -> np.ndarray:
    """A realistic single-object mask: an ellipse (~15 % of the image) with one hole."""
    import cv2

    mask = np.zeros((height, width), np.uint8)
    cv2.ellipse(mask, (width // 2, int(height * 0.45)), (width // 5, height // 4), 15, 0, 360, 1, -1)
    cv2.circle(mask, (width // 2, int(height * 0.45)), min(width, height) // 20, 0, -1)
    return mask.astype(bool)


def random_checkpoint(family: str, config: str, folder: Path, seed: int = 0) -> Path:
    """A seeded random-weight state dict of the real architecture, built once and reused.

    SAM 2 files are saved as Meta's are (``{"model": state_dict}``), so they load through the same path.
    """
    import torch

    path = folder / f"random-{family}-{config}-{seed}.pth"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(seed)
        if family == "sam2":
            from label_anything.engine.sam2 import build_sam2_network

            torch.save({"model": build_sam2_network(config).state_dict()}, path)
        else:
            from label_anything.engine.sam import ARCHITECTURES

            torch.save(ARCHITECTURES[(family, config)].build().state_dict(), path)
    return path


def load_random_model(family: str, config: str, folder: Path):
    from label_anything.engine import load_model

    return load_model(family, config, random_checkpoint(family, config, folder), device="cpu")


def object_logits(input_size: tuple[int, int], img_size: int = 1024) -> np.ndarray:
    """What a trained SAM decoder gives for ``object_mask``: (1, 256, 256) float32 low-res logits, a
    smooth signed distance (positive inside) over the model's padded square input frame."""
    import cv2

    h, w = input_size
    square = np.zeros((img_size, img_size), np.uint8)
    square[:h, :w] = object_mask(w, h)
    inside = cv2.distanceTransform(square, cv2.DIST_L2, 5)
    outside = cv2.distanceTransform(1 - square, cv2.DIST_L2, 5)
    low = cv2.resize(inside - outside, (256, 256), interpolation=cv2.INTER_AREA) / 4
    return low.astype(np.float32)[None]


class SyntheticMaskModel:
    """Wraps a model: runs its real decoder (full cost), then answers a realistic object mask of the
    same size, so the output stage (RLE, box, polygons) works on a realistic shape (see module doc).

    SAM-family models: the decoder network runs for real, then its logits are swapped for those of a
    realistic object (``object_logits``) and upscaled by the model's own code, so the click pays the
    upscaling a real mask costs. Others: the real decode, then ``object_mask``.
    """

    def __init__(self, model) -> None:
        self.model = model
        self.info = model.info
        self._masks: dict[tuple[int, int], np.ndarray] = {}
        self._logits: dict[tuple[int, int], Any] = {}

    def encode(self, image, image_digest):
        return self.model.encode(image, image_digest)

    def decode(self, embedding, prompt, *, multimask=None, keep="best"):
        import torch

        from label_anything.engine.types import Segmentation

        if hasattr(self.model, "decode_low_res"):
            _, iou = self.model.decode_low_res(embedding, prompt, multimask=multimask, keep=keep)
            size = embedding.input_size
            if size not in self._logits:
                self._logits[size] = torch.from_numpy(object_logits(size))
            logits = self._logits[size].expand(len(iou), -1, -1)
            masks = self.model.masks_from_low_res(logits, embedding)
            return Segmentation(masks=masks, scores=iou.float().numpy(), low_res_logits=logits.numpy())
        seg = self.model.decode(embedding, prompt, multimask=multimask, keep=keep)
        h, w = embedding.original_size
        mask = self._masks.setdefault((h, w), object_mask(w, h))
        masks = np.repeat(mask[None], len(seg.scores), axis=0)
        return Segmentation(masks=masks, scores=seg.scores, low_res_logits=seg.low_res_logits)


LABEL_CONFIG = """
<View>
  <Image name="image" value="$image"/>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="object"/></KeyPointLabels>
  <BrushLabels name="brush" toName="image"><Label value="object"/></BrushLabels>
  <RectangleLabels name="box" toName="image"><Label value="object"/></RectangleLabels>
  <PolygonLabels name="poly" toName="image"><Label value="object"/></PolygonLabels>
</View>
"""


def click_body(file_name: str, width: int, height: int, x: float, y: float, task_id: int = 1) -> dict:
    """A Label Studio /predict body for one positive smart keypoint at pixel (x, y)."""
    region = {
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "id": "k1",
        "value": {"x": x * 100 / width, "y": y * 100 / height, "width": 0.5, "keypointlabels": ["object"]},
        "is_positive": True,
        "from_name": "kp",
        "to_name": "image",
        "type": "keypointlabels",
        "origin": "manual",
    }
    return {
        "tasks": [task(file_name, task_id)],
        "project": "1.1700000000",
        "label_config": LABEL_CONFIG,
        "params": {"context": {"result": [region]}},
    }


def task(file_name: str, task_id: int = 1) -> dict:
    from urllib.parse import quote

    return {"id": task_id, "data": {"image": "/data/local-files/?d=" + quote(file_name)}}


def open_body(file_name: str, task_id: int) -> dict:
    """What Label Studio sends when a task is opened: /predict without context."""
    return {"tasks": [task(file_name, task_id)], "project": "1.1700000000", "label_config": LABEL_CONFIG}


@dataclass
class HttpServer:
    """A real uvicorn server on a free local port, in a thread (the client talks real HTTP)."""

    url: str
    server: Any
    thread: threading.Thread
    backend: Any


@contextlib.contextmanager
def serve_backend(model, root: Path, *, cache_bytes: int = 512 * 2**20, prefetch: bool = True) -> Iterator[HttpServer]:
    """Serve ``model`` with mask + box + polygon outputs over HTTP; yields the server."""
    import uvicorn

    from label_anything.engine.cache import EmbeddingCache
    from label_anything.imaging.fetch import ImageFetcher
    from label_anything.labelstudio.results import OutputOptions
    from label_anything.server.http import Backend, ServeOptions, create_app

    outputs = OutputOptions(mask=True, bbox=True, poly=True)
    backend = Backend(
        model, ImageFetcher(local_files_root=root), EmbeddingCache(max_memory_bytes=cache_bytes),
        ServeOptions(outputs=outputs, refine=False, prefetch=prefetch),
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(backend), host="127.0.0.1", port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield HttpServer(f"http://127.0.0.1:{port}", server, thread, backend)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def post(client, url: str, body: dict) -> dict:
    response = client.post(url + "/predict", json=body)
    response.raise_for_status()
    return response.json()


# -- sections ----------------------------------------------------------------------------------------
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
                model.onnx_decoder = dec
                t0 = time.perf_counter()
                seg = decode(model, embedding, prompt)
                if i:
                    times[name].append(time.perf_counter() - t0)
        model.onnx_decoder = onnx
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
                    model.onnx_decoder = dec
                    t0 = time.perf_counter()
                    answer = post(client, srv.url, body)
                    if i:
                        times[rt].append(time.perf_counter() - t0)
                    regions = len(answer["results"][0]["result"])
            model.onnx_decoder = onnx
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


# -- driver --------------------------------------------------------------------------------------------
def run_bench(
    quick: bool = False,
    workdir: Path | None = None,
    decoder: str = "auto",
    sizes: tuple[tuple[int, int], ...] = SIZES,
    rle_size: tuple[int, int] = (4000, 3000),
    models: tuple[str, ...] | None = None,
) -> dict:
    """Run every section; returns the JSON-able result. ``sizes`` / ``rle_size``: smaller in tests.

    ``models``: names from ``OTHER_MODELS`` to measure beside MobileSAM; None = all of them (none when quick).
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
            mobile.onnx_decoder = None
        results["meta"]["onnxruntime"] = _version("onnxruntime") if onnx_ok else None
        results["encoder"] = bench_encoder({"mobile_sam": mobile}, 1 if quick else 2, warmup=0 if quick else 1)
        results["decode"] = bench_decode(mobile, n, onnx_ok, sizes, raw_polygons=not quick)
        root = work / "files"
        root.mkdir(parents=True, exist_ok=True)
        files = {}
        from PIL import Image

        for w, h in sizes:
            name = f"photo-{w}x{h}.jpg"
            Image.fromarray(scene(w, h)).save(root / name, quality=92)
            files[(w, h)] = name
        results["http"] = bench_http(mobile, root, files, n, onnx_ok)
        # The server answers with whichever decoder is faster here (what `auto` would pick).
        results["naive"] = bench_naive(mobile, root, files, 1 if quick else 3)
        encoder_s = results["encoder"]["mobile_sam"]["torch"]["p50_ms"] / 1e3
        results["first_click"] = bench_first_click(mobile, root, encoder_s, 1 if quick else 3)
        results["precompute"] = bench_precompute(mobile, work / "precompute", 2 if quick else 4)
        results["rle"] = bench_rle(n, 1 if quick else 3, rle_size)
        others = (() if quick else tuple(OTHER_MODELS)) if models is None else models
        if others:
            photo = "photo-1024x768.jpg"
            Image.fromarray(scene(1024, 768)).save(root / photo, quality=92)
            results["models"] = bench_models(others, ckpts, root, photo, 3 if quick else 10, 1 if quick else 2)
    results["ratios"] = _ratios(results)
    results["meta"]["load_average_end"] = load_average()
    return results


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def _best_http(entry: dict) -> tuple[str, float]:
    runtimes = {k: v["p50_ms"] for k, v in entry.items() if isinstance(v, dict) and "p50_ms" in v}
    best = min(runtimes, key=runtimes.get)
    return best, runtimes[best]


def _ratios(r: dict) -> dict:
    out: dict[str, Any] = {}
    for size, entry in r["http"].items():
        runtime, ours = _best_http(entry)
        out[f"naive_over_ours_{size}"] = round(r["naive"][size]["p50_ms"] / ours, 1)
        out[f"ours_runtime_{size}"] = runtime
    sdk = r["rle"].get("label_studio_sdk")
    out["rle_sdk_over_ours"] = round(sdk["p50_ms"] / r["rle"]["ours"]["p50_ms"], 1) if sdk else None
    for size, entry in r["decode"].items():
        if "decode_onnx" in entry:
            out[f"decoder_torch_over_onnx_{size}"] = round(
                entry["decode_torch"]["p50_ms"] / entry["decode_onnx"]["p50_ms"], 2
            )
    return out


def format_table(r: dict) -> str:
    """The human-readable table printed by ``label-anything bench``."""
    rows: list[tuple[str, str]] = []
    for model, v in r["encoder"].items():
        rows.append((f"encoder {model} 1024x768 (torch)", f"{v['torch']['p50_ms']:.0f} ms"))
    for size, e in r["decode"].items():
        for k in ("decode_torch", "decode_onnx"):
            if k in e:
                rows.append((f"decode {size} {k[7:]} p50/p95", f"{e[k]['p50_ms']:.1f} / {e[k]['p95_ms']:.1f} ms"))
        if "upscale" in e:
            up = e["upscale"]
            rows.append((f"  upscale to {size}: ours / postprocess_masks" + ("" if up["same_mask"] else " (DIFFER)"),
                         f"{up['ours']['p50_ms']:.1f} / {up['official']['p50_ms']:.1f} ms"))
        rows.append((f"  brush RLE / box / polygons {size}",
                     f"{e['brush_rle']['p50_ms']:.1f} / {e['box']['p50_ms']:.2f} / {e['polygons']['p50_ms']:.1f} ms"))
    for size, e in r["http"].items():
        for rt in ("torch", "onnx"):
            if rt in e:
                value = f"{e[rt]['p50_ms']:.1f} / {e[rt]['p95_ms']:.1f} ms"
                rows.append((f"HTTP warm click {size} {rt} p50/p95", value))
        rows.append((f"HTTP naive click {size} p50", f"{r['naive'][size]['p50_ms']:.0f} ms"))
        rows.append((f"naive / ours {size}", f"{r['ratios'][f'naive_over_ours_{size}']}x"))
    fc = r["first_click"]
    rows.append((f"first click, task opened {fc['opened_ms_before_click']} ms earlier, prefetch on p50",
                 f"{fc['with_prefetch']['p50_ms']:.0f} ms"))
    rows.append(("first click, prefetch off p50", f"{fc['without_prefetch']['p50_ms']:.0f} ms"))
    pc = r["precompute"]
    rows.append(("precompute throughput", f"{pc['images_per_s_wall']:.2f} img/s"))
    rows.append((f"cached embedding on disk ({pc['dtype']})", f"{pc['bytes_per_embedding_on_disk'] / 1e6:.2f} MB"))
    for name, e in r.get("models", {}).items():
        rows.append((f"{name}: encoder 1024x768 / HTTP warm click p50",
                     f"{e['encoder']['p50_ms']:.0f} / {e['http_click_1024x768']['p50_ms']:.0f} ms"))
    rle = r["rle"]
    sdk = rle.get("label_studio_sdk")
    rows.append(("brush RLE 4000x3000 ours / label_studio_sdk",
                 f"{rle['ours']['p50_ms']:.1f} / {sdk['p50_ms']:.0f} ms" if sdk else f"{rle['ours']['p50_ms']:.1f} ms"))
    width = max(len(k) for k, _ in rows)
    m = r["meta"]
    head = [f"label-anything bench ({m['weights']})",
            f"load average start {m['load_average_start']} end {m.get('load_average_end')}, "
            f"{m['cpus']} CPUs, torch {m['torch']} ({m['torch_threads']} threads), onnxruntime {m['onnxruntime']}"]
    return "\n".join(head + [f"{k.ljust(width)}  {v}" for k, v in rows])


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``label-anything bench`` to the CLI's sub-commands."""
    p = subparsers.add_parser(
        "bench",
        help="measure encoder, click latency, naive ratio, prefetch, precompute and RLE on this machine",
        description="Benchmarks with random-weight checkpoints of the real architectures (timing does not "
        "depend on weight values). Prints a table and writes JSON.",
    )
    p.add_argument("--out", type=Path, default=Path("bench-results.json"), help="JSON file (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="few iterations, MobileSAM only (a smoke test)")
    p.add_argument("--decoder", choices=("auto", "torch"), default="auto",
                   help="auto: also time the ONNX Runtime decoder when onnxruntime is installed")
    p.add_argument("--workdir", type=Path, help="keep checkpoints and files here instead of a temp folder")
    p.add_argument("--models", default=None, metavar="NAMES",
                   help=f"comma-separated models to measure beside MobileSAM (encoder, warm click), from: "
                        f"{', '.join(OTHER_MODELS)}; 'none' for none (default: all; none with --quick)")
    p.set_defaults(func=cmd_bench)
    return p


def _model_names(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(n.strip() for n in text.split(",") if n.strip() and n.strip() != "none")
    unknown = [n for n in names if n not in OTHER_MODELS]
    if unknown:
        from label_anything.errors import LabelAnythingError

        raise LabelAnythingError(f"unknown bench model {unknown[0]!r}; choose from: {', '.join(OTHER_MODELS)}")
    return names


def cmd_bench(args: argparse.Namespace) -> int:
    import logging

    # One log line per click would bury the table; the levels come back afterwards (bench may run in-process).
    quiet = [logging.getLogger(name) for name in ("httpx", "label_anything.server", "label_anything.engine")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.WARNING)
    try:
        results = run_bench(quick=args.quick, workdir=args.workdir, decoder=args.decoder,
                            models=_model_names(args.models))
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
    print(format_table(results))
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0
