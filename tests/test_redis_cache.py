"""The Redis level of the embedding cache (issue 6), against a real ``redis-server`` on a loopback port.

Unit level: an entry put by one cache is found by another (separate memory, no disk); damaged entries are
recomputed; a Redis that dies (or is not there) costs one warning and no failure; two caches missing the
same image encode it once. Then the issue's proof with real processes: two ``label-anything serve``
backends (different ports and disk caches, one Redis): a click on A computes the embedding, the same click
on B is answered from Redis, with the same mask. And ``serve --workers 2`` answers.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
import pytest
import redis

from label_anything.app.labelstudio_process import free_port, spawn, stop_process, wait_http
from label_anything.engine.cache import EmbeddingCache, cache_key, embedding_to_bytes
from label_anything.engine.redis_cache import (
    KEY_PREFIX,
    RedisLevel,
    SharedCacheError,
    check_cache_url,
    check_shared_cache_arguments,
)
from label_anything.engine.types import Embedding

VENV_BIN = Path(sys.executable).parent
REDIS_SERVER = shutil.which("redis-server")


@dataclass
class RedisServer:
    """A real redis-server of this test: ``url``, a ``client``, and ``stop``/``start`` to cause outages."""

    port: int
    folder: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def client(self):
        return redis.Redis(host="127.0.0.1", port=self.port, db=0)

    def start(self) -> None:
        cmd = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(self.folder)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        for _ in range(200):
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with code {self.proc.returncode}")
            try:
                if self.client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not answer PING within 10 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture()
def redis_server(tmp_path) -> Iterator[RedisServer]:
    """A fresh redis-server (no persistence) on a free loopback port, killed at teardown."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server; `make setup` does it)")
    server = RedisServer(port=free_port(), folder=tmp_path)
    server.start()
    yield server
    server.stop()


def fake_embedding(seed: int, model_id: str = "m-x-1", nbytes: int = 4096) -> Embedding:
    rng = np.random.default_rng(seed)
    return Embedding(model_id, f"img{seed}", (30, 40), (768, 1024),
                     {"features": rng.standard_normal(nbytes // 4).astype(np.float32)})


# -- URL and set-up errors ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://127.0.0.1:6379/0", "scheme 'http'"),
        ("127.0.0.1:6379", "expected redis://"),
        ("redis://127.0.0.1:port/0", "Port"),
        ("redis://:6379/0", "no host"),
        ("redis://127.0.0.1:6379/zero", "is a number"),
    ],
)
def test_malformed_cache_url_is_a_clear_error(url, says):
    with pytest.raises(SharedCacheError, match=says):
        check_cache_url(url)


def test_password_is_not_shown_in_errors_or_logs():
    with pytest.raises(SharedCacheError) as raised:
        check_cache_url("redis://user:s3cret@127.0.0.1:6379/x")
    assert "s3cret" not in str(raised.value)
    assert "s3cret" not in RedisLevel("redis://:s3cret@127.0.0.1:1/0").display_url


def test_missing_redis_py_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "redis", None)  # as if not installed: `import redis` raises ImportError
    with pytest.raises(SharedCacheError, match=r"label-anything\[redis\]"):
        check_shared_cache_arguments("redis://127.0.0.1:6379/0")


@pytest.mark.parametrize("command", ["serve", "precompute"])
def test_cli_refuses_a_malformed_url_before_loading_a_model(command, capsys, tmp_path):
    from label_anything.cli.parser import main

    where = ["--images", str(tmp_path)] if command == "precompute" else []
    argv = [command, *where, "--cache-url", "redis//nowhere", "--model-name", "mobile_sam", "--checkpoint",
            str(tmp_path / "missing.pth"), "--cache-dir", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--cache-url" in err and "redis://" in err and "Traceback" not in err
    assert "missing.pth" not in err  # the URL was checked first


# -- the Redis level ---------------------------------------------------------------------------------
def test_entry_put_by_one_cache_is_found_by_another(redis_server):
    key = cache_key("m-x-1", "img1")
    writer = EmbeddingCache(shared=RedisLevel(redis_server.url, ttl_s=3600))
    stored = writer.put(key, fake_embedding(1))
    reader = EmbeddingCache(shared=RedisLevel(redis_server.url, ttl_s=3600))  # its own memory, no disk
    assert reader.contains(key)
    got = reader.get(key)
    assert got is not None and got.image_digest == "img1" and got.original_size == (30, 40)
    np.testing.assert_array_equal(got.arrays["features"], stored.arrays["features"])
    assert got.arrays["features"].dtype == np.float16
    assert (reader.stats.shared, reader.stats.computed) == (1, 0)
    # what is in Redis: the .npz bytes under the project's prefix, with an expiry
    raw_key = f"{KEY_PREFIX}embedding:{key}"
    assert redis_server.client.get(raw_key) == embedding_to_bytes(stored)
    assert 0 < redis_server.client.ttl(raw_key) <= 3600
    assert not reader.contains(cache_key("m-x-1", "img2"))


def test_disk_entry_goes_to_redis_only_when_asked(redis_server, tmp_path):
    key = cache_key("m-x-1", "img3")
    EmbeddingCache(disk_dir=tmp_path).put(key, fake_embedding(3))  # on disk, not in Redis
    reader = EmbeddingCache(disk_dir=tmp_path, shared=RedisLevel(redis_server.url, ttl_s=3600))
    assert reader.contains(key)  # the click path's check: no disk read, nothing written
    assert redis_server.client.keys(f"{KEY_PREFIX}*") == []
    assert reader.contains(key, share=True)  # precompute's: other machines get it
    assert redis_server.client.keys(f"{KEY_PREFIX}*") == [f"{KEY_PREFIX}embedding:{key}".encode()]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "other-key"])
def test_damaged_redis_entry_is_recomputed(redis_server, damage, caplog):
    key = cache_key("m-x-1", "img1")
    raw_key = f"{KEY_PREFIX}embedding:{key}"
    EmbeddingCache(shared=RedisLevel(redis_server.url)).put(key, fake_embedding(1))
    data = redis_server.client.get(raw_key)
    bad = {"truncate": data[:100], "garbage": b"\x00" * 50, "other-key": embedding_to_bytes(fake_embedding(2))}
    redis_server.client.set(raw_key, bad[damage])
    calls = []
    cache = EmbeddingCache(shared=RedisLevel(redis_server.url))
    got = cache.get_or_compute(key, lambda: calls.append(1) or fake_embedding(1))
    assert calls == [1] and got.image_digest == "img1"
    assert "damaged" in caplog.text
    # the recomputed entry replaced the damaged one
    fresh = EmbeddingCache(shared=RedisLevel(redis_server.url)).get(key)
    assert fresh is not None and fresh.image_digest == "img1"


def test_redis_killed_mid_way_costs_one_warning_not_a_click(redis_server, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="label_anything.engine.redis_cache")
    level = RedisLevel(redis_server.url, retry_after_s=0.0, timeout_s=1.0)  # retry on every call
    cache = EmbeddingCache(shared=level, disk_dir=tmp_path / "disk")
    cache.put("m-x-1/img1", fake_embedding(1))
    redis_server.stop()
    calls = []
    for i in range(2, 6):  # new images: memory and Redis miss, every Redis call fails
        got = cache.get_or_compute(f"m-x-1/img{i}", lambda i=i: calls.append(i) or fake_embedding(i))
        assert got.image_digest == f"img{i}"
    assert calls == [2, 3, 4, 5]
    assert cache.get("m-x-1/img1") is not None  # from memory
    other = EmbeddingCache(shared=level, disk_dir=tmp_path / "disk")  # a new process on this machine: disk
    assert other.get("m-x-1/img3") is not None and other.stats.disk == 1
    failures = [r for r in caplog.records if "failed" in r.getMessage() and r.levelno == logging.WARNING]
    assert len(failures) == 1, [r.getMessage() for r in failures]
    # back: the next call uses Redis again and says so
    redis_server.start()
    cache.put("m-x-1/img9", fake_embedding(9))
    assert "is back" in caplog.text
    assert EmbeddingCache(shared=RedisLevel(redis_server.url)).get("m-x-1/img9") is not None


def test_no_redis_at_all_still_works(tmp_path, caplog):
    level = RedisLevel(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    assert not level.ping()
    cache = EmbeddingCache(shared=level)
    assert cache.get_or_compute("m-x-1/img1", lambda: fake_embedding(1)).image_digest == "img1"
    assert cache.get("m-x-1/img1") is not None
    assert caplog.text.count("failed") == 1


def test_two_caches_missing_the_same_image_compute_it_once(redis_server):
    """Separate caches stand for separate processes: only the Redis lock can stop the second encode."""
    calls = []
    started = threading.Barrier(4)

    def slow() -> Embedding:
        calls.append(1)
        time.sleep(0.5)  # long enough for the others to find the lock taken
        return fake_embedding(5)

    caches = [EmbeddingCache(shared=RedisLevel(redis_server.url)) for _ in range(4)]
    results: list[Embedding] = []

    def click(cache: EmbeddingCache) -> None:
        started.wait()
        results.append(cache.get_or_compute("m-x-1/img5", slow))

    threads = [threading.Thread(target=click, args=(c,)) for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(calls) == 1 and len(results) == 4
    for r in results:
        np.testing.assert_array_equal(r.arrays["features"], results[0].arrays["features"])
    assert sum(c.stats.computed for c in caches) == 1 and sum(c.stats.shared for c in caches) == 3
    assert not redis_server.client.exists(f"{KEY_PREFIX}encoding:m-x-1/img5")  # lock released


def test_precompute_fills_the_shared_cache(redis_server, tmp_path, chelsea, random_checkpoint, capsys):
    import json

    from PIL import Image

    from label_anything.cli.parser import main
    from label_anything.imaging.decode import image_digest, read_image

    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(chelsea).save(folder / "a.png")
    argv = ["precompute", "--images", str(folder), "--model-name", "mobile_sam", "--checkpoint",
            str(random_checkpoint("mobile_sam", "vit_t")), "--device", "cpu", "--cache-dir", str(tmp_path / "c"),
            "--no-progress", "--cache-url", redis_server.url]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["encoded"] == 1 and report["shared_cache"] == redis_server.url
    digest = image_digest(read_image(folder / "a.png"))
    assert redis_server.client.keys(f"{KEY_PREFIX}*") == [f"{KEY_PREFIX}embedding:{report['model']}/{digest}".encode()]
    # an entry encoded before Redis was used (only on disk) is shared by the next run
    redis_server.client.flushdb()
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["already_cached"] == 1
    assert len(redis_server.client.keys(f"{KEY_PREFIX}embedding:*")) == 1


# -- real backend processes ----------------------------------------------------------------------------
def _kp(x: float, y: float, width: int, height: int) -> dict:
    return {
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {"x": x * 100 / width, "y": y * 100 / height, "width": 0.5, "keypointlabels": ["cat"]},
        "is_positive": True,
        "from_name": "KeyPointLabels",
        "to_name": "image",
        "type": "keypointlabels",
    }


def _click_body(image_name: str, config: str, shape: tuple[int, int]) -> dict:
    height, width = shape
    task = {"id": 1, "data": {"image": "/data/local-files/?d=" + quote(image_name)}}
    return {"tasks": [task], "project": "1.1", "label_config": config,
            "params": {"context": {"result": [_kp(200, 120, width, height)]}}}


def _mask(prediction: dict) -> np.ndarray:
    from label_studio_sdk.converter.brush import decode_rle

    (region,) = [r for r in prediction["result"] if r["type"] == "brushlabels"]
    h, w = region["original_height"], region["original_width"]
    return np.reshape(decode_rle(region["value"]["rle"]), (h, w, 4))[:, :, 3] > 0


@pytest.fixture()
def start_serve(random_checkpoint, chelsea_jpeg, tmp_path):
    """Factory: ``start_serve(cache_dir, *extra)`` runs a real ``label-anything serve`` (random MobileSAM)."""
    procs: list[subprocess.Popen] = []

    def start(cache_dir: Path, *extra: str) -> tuple[str, Path]:
        port = free_port()
        log = tmp_path / f"serve-{port}.log"
        cmd = [str(VENV_BIN / "label-anything"), "serve", "--model-name", "mobile_sam", "--sam-config", "vit_t",
               "--checkpoint", str(random_checkpoint("mobile_sam", "vit_t")), "--device", "cpu",
               "--cache-dir", str(cache_dir), "--port", str(port), "--local-files-root", str(chelsea_jpeg.parent),
               "--no-refine", *extra]
        proc = spawn(cmd, log, {"LABEL_ANYTHING_CACHE_URL": "", "LABEL_ANYTHING_WORKERS": ""})
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/health", proc, 180, log)
        return url, log

    yield start
    for proc in procs:
        stop_process(proc)


def test_click_on_one_backend_is_answered_by_another_from_redis(
    redis_server, start_serve, chelsea_jpeg, chelsea, original_label_config, tmp_path
):
    url_a, log_a = start_serve(tmp_path / "cache-a", "--cache-url", redis_server.url)
    url_b, log_b = start_serve(tmp_path / "cache-b", "--cache-url", redis_server.url)
    body = _click_body(chelsea_jpeg.name, original_label_config, chelsea.shape[:2])
    with httpx.Client(timeout=120) as http:
        answer_a = http.post(url_a + "/predict", json=body)
        assert answer_a.status_code == 200, answer_a.text
        assert len(redis_server.client.keys(f"{KEY_PREFIX}embedding:*")) == 1  # A computed it and shared it
        answer_b = http.post(url_b + "/predict", json=body)
        assert answer_b.status_code == 200, answer_b.text
    log_a_text, log_b_text = log_a.read_text(), log_b.read_text()
    # B found the embedding in Redis (its click line says "cached") and never encoded it: its disk has none
    assert "loaded from the shared cache (Redis)" in log_b_text
    assert re.search(r"task 1 'cat': 1 point\(s\).*embedding \d+ ms cached", log_b_text), log_b_text[-2000:]
    assert not list((tmp_path / "cache-b" / "embeddings").glob("*/*.npz"))
    assert "loaded from the shared cache" not in log_a_text
    assert len(list((tmp_path / "cache-a" / "embeddings").glob("*/*.npz"))) == 1
    prediction_a, prediction_b = answer_a.json()["results"][0], answer_b.json()["results"][0]
    mask_a, mask_b = _mask(prediction_a), _mask(prediction_b)
    assert mask_a.any() and np.count_nonzero(mask_a != mask_b) <= max(10, mask_a.size // 10_000)
    assert prediction_b["score"] == pytest.approx(prediction_a["score"], abs=1e-4)


def test_serve_with_two_workers_answers(redis_server, start_serve, chelsea_jpeg, chelsea, original_label_config,
                                        tmp_path):
    url, log = start_serve(tmp_path / "cache", "--workers", "2", "--cache-url", redis_server.url)
    with httpx.Client(timeout=120) as http:
        assert http.get(url + "/health").json()["status"] == "UP"
        answer = http.post(url + "/predict", json=_click_body(chelsea_jpeg.name, original_label_config,
                                                               chelsea.shape[:2]))
        assert answer.status_code == 200, answer.text
    assert _mask(answer.json()["results"][0]).any()
    text = log.read_text()
    # /health can answer before both workers loaded their model: wait for the second one's line
    for _ in range(600):
        if len(set(re.findall(r"worker (\d+) ready", text))) == 2:
            break
        time.sleep(0.2)
        text = log.read_text()
    workers = set(re.findall(r"worker (\d+) ready", text))
    assert len(workers) == 2, text[-3000:]
    (answered_by,) = re.findall(r"\[worker (\d+)\]: task 1 'cat'", text)
    assert answered_by in workers
    assert len(redis_server.client.keys(f"{KEY_PREFIX}embedding:*")) == 1

