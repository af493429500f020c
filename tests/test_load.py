"""Under load (issue 7): 16 concurrent clients clicking on 8 images through a real uvicorn server.

Every answer must equal the serial answer for its own image and prompt (refinement included: each client
refines its own object), no request may fail, /health must answer within 1 s throughout, and the memory
tier of the embedding cache must stay within its limit although the 8 embeddings do not fit in it (the
evicted ones come back from the disk tier). MobileSAM random weights on CPU; images are small crops.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from label_anything.app.interactive import Backend, ServeOptions
from label_anything.engine.cache import EmbeddingCache
from label_anything.imaging.fetch import ImageFetcher
from label_anything.labelstudio.results import OutputOptions
from label_anything.server.http import create_app

CLIENTS = 16
IMAGES = 8
CLICKS = 3
SIZE = (96, 128)  # (H, W) of every test image


def _images(root: Path) -> list[str]:
    """8 distinct small images (crops and flips of scikit-image photos) saved under ``root``."""
    data = pytest.importorskip("skimage.data")
    h, w = SIZE
    sources = [data.chelsea(), data.astronaut(), data.coffee(), data.rocket()]
    names = []
    for i in range(IMAGES):
        photo = sources[i % len(sources)]
        crop = photo[40 : 40 + h, 60 : 60 + w]
        if i >= len(sources):
            crop = crop[:, ::-1]  # the mirrored crop is another picture with another embedding
        name = f"img{i}.png"
        Image.fromarray(np.ascontiguousarray(crop)).save(root / name)
        names.append(name)
    return names


def _click(x: float, y: float, positive: bool) -> dict:
    h, w = SIZE
    return {
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": {"x": x * 100 / w, "y": y * 100 / h, "width": 0.5, "keypointlabels": ["cat"]},
        "is_positive": positive,
        "from_name": "KeyPointLabels",
        "to_name": "image",
        "type": "keypointlabels",
    }


def _sessions(names: list[str], config: str) -> list[list[dict]]:
    """Per client: the /predict bodies of its clicks, each re-sending the earlier points (as Label Studio
    does), on its own task so refinement applies per client."""
    rng = np.random.default_rng(7)
    h, w = SIZE
    sessions = []
    for c in range(CLIENTS):
        points = [(float(rng.uniform(5, w - 5)), float(rng.uniform(5, h - 5))) for _ in range(CLICKS)]
        task = {"id": 100 + c, "data": {"image": "/data/local-files/?d=" + names[c % IMAGES]}}
        bodies = []
        for k in range(1, CLICKS + 1):
            regions = [_click(x, y, positive=i != 2) for i, (x, y) in enumerate(points[:k])]
            bodies.append(
                {"tasks": [task], "project": "1.1", "label_config": config, "params": {"context": {"result": regions}}}
            )
        sessions.append(bodies)
    return sessions


def _mask(prediction: dict) -> np.ndarray:
    from label_studio_sdk.converter.brush import decode_rle

    (region,) = [r for r in prediction["result"] if r["type"] == "brushlabels"]
    h, w = region["original_height"], region["original_width"]
    return np.reshape(decode_rle(region["value"]["rle"]), (h, w, 4))[:, :, 3] > 0


def _same_mask(actual: np.ndarray, expected: np.ndarray) -> bool:
    """As tests/test_server.py's assert_same_mask: equal up to a few pixels of float noise."""
    return actual.shape == expected.shape and np.count_nonzero(actual != expected) <= max(10, expected.size // 10_000)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _backend(model, root: Path, cache: EmbeddingCache) -> Backend:
    return Backend(model, ImageFetcher(local_files_root=root), cache, ServeOptions(outputs=OutputOptions(mask=True)))


def test_concurrent_clients_get_the_serial_answers(mobile_sam_model, original_label_config, tmp_path):
    import uvicorn

    names = _images(tmp_path)
    sessions = _sessions(names, original_label_config)

    # the serial answers, from a backend of its own
    reference = _backend(mobile_sam_model, tmp_path, EmbeddingCache(dtype=np.float32))
    expected = [[reference.predict(b)["results"][0] for b in bodies] for bodies in sessions]
    per_embedding = reference.cache.memory_bytes // len(reference.cache)
    reference.close()

    limit = 3 * per_embedding + per_embedding // 2  # room for 3 of the 8 embeddings
    cache = EmbeddingCache(max_memory_bytes=limit, disk_dir=tmp_path / "embeddings", dtype=np.float32)
    backend = _backend(mobile_sam_model, tmp_path, cache)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(backend), host="127.0.0.1", port=port, log_level="warning"))
    server_thread = threading.Thread(target=server.run, daemon=True)
    server_thread.start()
    base = f"http://127.0.0.1:{port}"
    answers: dict[tuple[int, int], tuple[int, dict | str]] = {}
    health: list[float] = []
    health_failures: list[str] = []
    cache_peak = [0]
    done = threading.Event()

    def poll_health() -> None:
        with httpx.Client(base_url=base, timeout=5) as http:
            while not done.is_set():
                t0 = time.perf_counter()
                try:
                    status = http.get("/health").status_code
                    if status != 200:
                        health_failures.append(f"HTTP {status}")
                except httpx.HTTPError as exc:
                    health_failures.append(repr(exc))
                health.append(time.perf_counter() - t0)
                cache_peak[0] = max(cache_peak[0], cache.memory_bytes)
                time.sleep(0.05)

    def run_client(c: int) -> None:
        with httpx.Client(base_url=base, timeout=120) as http:
            for k, request in enumerate(sessions[c]):
                response = http.post("/predict", json=request)
                ok = response.status_code == 200
                answers[(c, k)] = (response.status_code, response.json()["results"][0] if ok else response.text)

    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        assert server.started
        poller = threading.Thread(target=poll_health)
        poller.start()
        t0 = time.perf_counter()
        clients = [threading.Thread(target=run_client, args=(c,)) for c in range(CLIENTS)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(300)
        elapsed = time.perf_counter() - t0
        done.set()
        poller.join(10)
    finally:
        done.set()
        server.should_exit = True
        server_thread.join(10)

    assert len(answers) == CLIENTS * CLICKS
    failed = {key: answer for key, answer in answers.items() if answer[0] != 200}
    assert not failed
    for (c, k), (_, prediction) in answers.items():
        want = expected[c][k]
        assert _same_mask(_mask(prediction), _mask(want)), (c, k)
        assert prediction["score"] == pytest.approx(want["score"], abs=1e-4)
    assert health and not health_failures, health_failures
    assert max(health) < 1.0, f"/health took {max(health):.2f} s under load"
    assert cache_peak[0] <= limit and cache.memory_bytes <= limit
    assert len(cache) < IMAGES  # the limit did evict: the test exercised it
    print(
        f"\n[load, MobileSAM random weights, CPU] {CLIENTS} clients x {CLICKS} clicks on {IMAGES} images in "
        f"{elapsed:.1f} s; /health max {max(health) * 1e3:.0f} ms over {len(health)} polls; "
        f"cache peak {cache_peak[0] / 2**20:.1f} of {limit / 2**20:.1f} MiB"
    )
