"""``--ray-address``: boxes-to-masks and precompute on a real local Ray cluster (a head node with two CPUs,
so two workers) give what a single-process run gives, with the work spread over both workers."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from label_anything.app.boxes_to_masks import boxes_to_masks, partial_path
from label_anything.app.precompute import folder_images, precompute
from label_anything.app.ray_pool import PoolOptions, worker_layout
from label_anything.engine.cache import EmbeddingCache, embedding_from_bytes

ray = pytest.importorskip("ray")
skimage_data = pytest.importorskip("skimage.data")

# (file name, scikit-image photo, boxes [x, y, w, h] in the half-size image)
PHOTOS = [
    ("coffee.png", "coffee", [[75.0, 20.0, 150.0, 130.0], [5.0, 5.0, 60.0, 45.0]]),
    ("chelsea.png", "chelsea", [[70.0, 10.0, 90.0, 125.0]]),
    ("astronaut.png", "astronaut", [[70.0, 5.0, 100.0, 110.0], [150.0, 150.0, 100.0, 100.0]]),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_env() -> dict[str, str]:
    """Environment of the head node and of the drivers: Ray's token authentication with a token of this
    test's own (a connecting driver must present it; nothing is read from or written to ~/.ray)."""
    return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "RAY_USAGE_STATS_ENABLED": "0",
            # the head's Ray Client proxy waits 30 s for the per-client server it starts: too short on 2 busy cores
            "RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S": "180"}


@pytest.fixture(scope="module")
def ray_cluster(ray_env) -> Iterator[str]:
    """A Ray head node on 127.0.0.1 with 2 CPUs (``ray start --head --block`` in a process of its own,
    stopped by its pid at teardown). Yields (HOST:PORT, ray://HOST:PORT, its log folder)."""
    port, client_port = _free_port(), _free_port()
    # Ray's socket paths must stay under 108 characters: a short folder of our own, not pytest's tmp_path.
    temp_dir = tempfile.mkdtemp(prefix="la-ray-")
    log_path = Path(temp_dir) / "head.log"
    command = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--port={port}",
               "--node-ip-address=127.0.0.1", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false",
               f"--ray-client-server-port={client_port}", "--disable-usage-stats", "--object-store-memory=200000000",
               f"--temp-dir={temp_dir}"]
    with log_path.open("wb") as log:
        head = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env=ray_env)
    try:
        for _ in range(120):  # the head answers within seconds; a dead one fails the fixture at once
            assert head.poll() is None, log_path.read_text()
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        else:
            pytest.fail(f"Ray head did not start: {log_path.read_text()}")
        yield f"127.0.0.1:{port}", f"ray://127.0.0.1:{client_port}", temp_dir
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Run the single-process reference with one PyTorch thread, as each worker (1 CPU) does: PyTorch's CPU
    kernels may differ in the last bits of a float between thread counts, and the comparison is exact."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Three half-size photos (PNG) and a COCO file of boxes. Returns (COCO path, images folder)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("ray-coco")
    images_dir = root / "images"
    images_dir.mkdir()
    images, annotations = [], []
    for image_id, (name, photo, boxes) in enumerate(PHOTOS, start=1):
        pixels = np.ascontiguousarray(getattr(skimage_data, photo)()[::2, ::2])
        Image.fromarray(pixels).save(images_dir / name)
        images.append({"id": image_id, "file_name": name, "height": pixels.shape[0], "width": pixels.shape[1]})
        for bbox in boxes:
            annotations.append({"id": 100 + len(annotations), "image_id": image_id, "category_id": 1, "bbox": bbox})
    # An image whose only box is unusable: reported, never sent to a worker, left untouched.
    images.append({"id": 4, "file_name": "coffee.png"})
    annotations.append({"id": 999, "image_id": 4, "category_id": 1, "bbox": [1.0, 1.0, 0.0, 5.0]})
    path = root / "boxes.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "thing"}]}))
    return path, images_dir


def _model_args(random_checkpoint) -> list[str]:
    return ["--model-name", "mobile_sam", "--checkpoint", str(random_checkpoint("mobile_sam", "vit_t")),
            "--device", "cpu"]


def _ray_args(address: str) -> list[str]:
    return ["--ray-address", address, "--ray-workers", "2", "--ray-cpus-per-worker", "1", "--no-progress"]


def _run_cli(args: list[str], env: dict[str, str], ray_logs: str | None = None) -> dict:
    """``label-anything ARGS`` as a driver process of its own (as a user runs it); its JSON summary."""
    done = subprocess.run([sys.executable, "-m", "label_anything", *args], env=env, capture_output=True,
                          text=True, timeout=600)
    if done.returncode != 0 and ray_logs is not None:  # say why Ray failed, from the cluster's own logs
        logs = sorted(Path(ray_logs).glob("session_*/logs/ray_client_server*.[eo][ru][rt]"))
        pytest.fail(done.stderr[-2000:] + "".join(f"\n--- {p.name}\n{p.read_text()[-2000:]}" for p in logs))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def local_run(dataset, mobile_sam_model, one_thread, tmp_path_factory) -> dict:
    """The single-process boxes-to-masks output (the reference), as JSON."""
    coco_path, images_dir = dataset
    out = tmp_path_factory.mktemp("local") / "local.json"
    report = boxes_to_masks(mobile_sam_model, coco_path, images_dir, out, progress=False)
    assert report.boxes_done == 5 and len(report.failed) == 1
    return json.loads(out.read_text())


def test_boxes_to_masks_on_ray_equals_a_local_run(ray_cluster, ray_env, dataset, random_checkpoint, local_run,
                                                  tmp_path):
    coco_path, images_dir = dataset
    out = tmp_path / "ray.json"
    summary = _run_cli(["boxes-to-masks", str(coco_path), "--images", str(images_dir), "--out", str(out),
                        *_model_args(random_checkpoint), *_ray_args(ray_cluster[0])], ray_env)
    # Same annotations, same order, same masks, scores and areas: the files are equal as JSON.
    assert json.loads(out.read_text()) == local_run
    assert (summary["images"], summary["boxes"]) == (3, 5)
    assert summary["failed"] == ["coffee.png: annotation 999 has no usable bbox [1.0, 1.0, 0.0, 5.0]"]
    # Both workers took images, and neither is this process.
    workers = summary["ray_workers"]
    pids = {int(where.rsplit(":", 1)[1]) for where in workers}
    assert len(pids) == 2 and os.getpid() not in pids and sum(workers.values()) == 3
    assert not partial_path(out).exists()


def test_boxes_to_masks_over_ray_client_resumes_a_local_run(ray_cluster, ray_env, dataset, random_checkpoint,
                                                           mobile_sam_model, local_run, tmp_path):
    coco_path, images_dir = dataset

    class StopError(Exception):
        pass

    def stop(image_id) -> None:
        raise StopError(image_id)

    out = tmp_path / "resumed.json"
    with pytest.raises(StopError):
        boxes_to_masks(mobile_sam_model, coco_path, images_dir, out, progress=False, after_image=stop)
    # Through Ray Client (ray://), as from a laptop outside the cluster.
    summary = _run_cli(["boxes-to-masks", str(coco_path), "--images", str(images_dir), "--out", str(out),
                        *_model_args(random_checkpoint), *_ray_args(ray_cluster[1])], ray_env, ray_cluster[2])
    assert (summary["images_resumed"], summary["images"]) == (1, 2)  # the finished image is not sent again
    assert json.loads(out.read_text()) == local_run


def test_precompute_on_ray_fills_the_cache_like_a_local_run(ray_cluster, ray_env, dataset, random_checkpoint,
                                                            mobile_sam_model, one_thread, tmp_path):
    _, images_dir = dataset
    local_dir = tmp_path / "local-embeddings"
    local = precompute(mobile_sam_model, folder_images(images_dir), EmbeddingCache(disk_dir=local_dir),
                       progress=False)
    assert local.encoded == 3

    local_files = sorted(p.relative_to(local_dir) for p in local_dir.glob("*/*.npz"))
    ray_dir = tmp_path / "cache" / "embeddings"
    # One image is already in the driver's cache (an interrupted earlier run): it must not be sent again.
    (ray_dir / local_files[0]).parent.mkdir(parents=True)
    shutil.copy(local_dir / local_files[0], ray_dir / local_files[0])

    summary = _run_cli(["precompute", "--images", str(images_dir), "--cache-dir", str(tmp_path / "cache"),
                        *_model_args(random_checkpoint), *_ray_args(ray_cluster[0])], ray_env)
    assert (summary["encoded"], summary["already_cached"], summary["failed"]) == (2, 1, [])
    assert summary["model"] == mobile_sam_model.info.model_id
    assert sorted(p.relative_to(ray_dir) for p in ray_dir.glob("*/*.npz")) == local_files
    for name in local_files:
        # The .npz bytes carry zip timestamps: compare what they hold.
        expected, got = (embedding_from_bytes((folder / name).read_bytes()) for folder in (local_dir, ray_dir))
        assert (got.model_id, got.image_digest, got.original_size, got.input_size) == (
            expected.model_id, expected.image_digest, expected.original_size, expected.input_size)
        assert got.arrays.keys() == expected.arrays.keys()
        for key, array in expected.arrays.items():
            assert got.arrays[key].dtype == array.dtype
            np.testing.assert_array_equal(got.arrays[key], array)


def test_unreachable_cluster_is_a_one_line_error(dataset, random_checkpoint, tmp_path, capsys):
    from label_anything.cli.parser import main

    coco_path, images_dir = dataset
    assert main(["boxes-to-masks", str(coco_path), "--images", str(images_dir), "--out", str(tmp_path / "o.json"),
                 *_model_args(random_checkpoint), *_ray_args(f"127.0.0.1:{_free_port()}")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("label-anything: error: cannot reach the Ray cluster at '127.0.0.1:")
    assert not (tmp_path / "o.json").exists()


def test_missing_ray_is_a_one_line_error(dataset, random_checkpoint, tmp_path, capsys, monkeypatch):
    from label_anything.cli.parser import main

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed (import fails)
    _, images_dir = dataset
    assert main(["precompute", "--images", str(images_dir), "--cache-dir", str(tmp_path / "cache"),
                 *_model_args(random_checkpoint), *_ray_args("auto")]) == 2
    assert "pip install 'label-anything[ray]'" in capsys.readouterr().err


def test_worker_layout_defaults():
    gpu_nodes = [{"CPU": 16.0, "GPU": 4.0}, {"CPU": 8.0, "GPU": 2.0}, {"CPU": 4.0}]
    assert worker_layout(gpu_nodes, PoolOptions("auto")) == (6, 1.0, 1)  # one per GPU
    assert worker_layout(gpu_nodes, PoolOptions("auto", gpus_per_worker=0.5)) == (12, 0.5, 1)  # two per GPU
    cpu_nodes = [{"CPU": 16.0}, {"CPU": 2.0}]
    assert worker_layout(cpu_nodes, PoolOptions("auto")) == (4, 0.0, 4)  # 4 CPUs each; the 2-CPU node fits none
    assert worker_layout([{"CPU": 2.0}], PoolOptions("auto")) == (1, 0.0, 2)  # never more than a node has
    assert worker_layout(cpu_nodes, PoolOptions("auto", workers=3, cpus_per_worker=1)) == (3, 0.0, 1)


def _client_server_failure() -> Exception:
    """What ``ray.init("ray://...")`` raises when the head's Ray Client proxy fails to start the client's own
    server (seen on a busy 2-core head; it cannot be caused on purpose). Made by Ray's code itself, not typed
    here: the proxy's ``Datapath`` (told that the server did not start) answers the init request, and the
    client's ``Worker._server_init`` turns that answer into the exception, as they do over gRPC."""
    from types import SimpleNamespace

    from ray.core.generated import ray_client_pb2
    from ray.util.client import worker as client_worker
    from ray.util.client.server import proxier

    class ServerThatDoesNotStart:
        def create_specific_server(self, client_id):
            return SimpleNamespace(port=23000, set_result=lambda result: None)

        def start_specific_server(self, client_id, job_config) -> bool:
            return False

    class Context:
        def invocation_metadata(self):
            return [("client_id", "test-client"), ("reconnecting", "False")]

    def init(request):
        stream = proxier.DataServicerProxy(ServerThatDoesNotStart()).Datapath(
            iter([ray_client_pb2.DataRequest(req_id=1, init=request)]), Context())
        return next(iter(stream)).init

    try:
        client_worker.Worker._server_init(SimpleNamespace(data_client=SimpleNamespace(Init=init),
                                                          _reconnect_grace_period=0), None, {})
    except Exception as exc:  # whatever Ray raises is what connect() gets
        return exc
    raise AssertionError("Ray's client accepted a failed init")


class _FlakyRay:
    """Stands in for ``ray``: its ``init`` raises Ray's own client-server failure ``failures`` times."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.shutdowns = 0

    def init(self, **kwargs) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise _client_server_failure()

    def shutdown(self) -> None:
        self.shutdowns += 1


def test_ray_client_server_that_fails_to_start_is_tried_again(monkeypatch, caplog):
    from label_anything.app import ray_pool as distributed
    from label_anything.errors import LabelAnythingError

    monkeypatch.setattr(distributed, "_check_reachable", lambda address: None)
    monkeypatch.setattr(distributed.time, "sleep", lambda s: None)
    flaky = _FlakyRay(failures=1)
    distributed.connect(flaky, "ray://127.0.0.1:10001")
    assert (flaky.calls, flaky.shutdowns) == (2, 1)
    assert "client server did not start (try 1 of 3)" in caplog.text

    always = _FlakyRay(failures=99)
    with pytest.raises(LabelAnythingError) as err:
        distributed.connect(always, "ray://127.0.0.1:10001")
    assert always.calls == distributed.CLIENT_ATTEMPTS
    # one line that says what failed and where to look, not Ray's "Initialization failure from server:"
    assert str(err.value) == ("cannot reach the Ray cluster at 'ray://127.0.0.1:10001': RuntimeError: Starting Ray "
                              "client server failed. See ray_client_server_23000.err for detailed logs.")
    # not a Ray Client address: no second try
    head = _FlakyRay(failures=1)
    with pytest.raises(LabelAnythingError):
        distributed.connect(head, "127.0.0.1:6379")
    assert head.calls == 1


class _Ref:
    """An object ref of ``_ScriptedRay``: a call that finishes ``duration`` ticks after it was submitted."""

    def __init__(self, finish: float, run) -> None:
        self.finish, self.run = finish, run


class _ScriptedRay:
    """Stands in for ``ray`` in ``RayPool.map``: ``wait`` hands back the in-flight call that finishes first
    (by the duration its job names), so jobs finish in another order than they were submitted. ``get`` runs
    the call as the worker would, and a call can fail with a real Ray exception."""

    exceptions = ray.exceptions

    def __init__(self) -> None:
        self.now = 0.0
        self.finished_order: list = []

    def actor(self, name: str):
        scripted = self

        class Method:
            def remote(self, fn, *args):
                job = args[0]
                return _Ref(scripted.now + job["duration"], lambda: (name, fn("model", *args)))

        return type("Actor", (), {"run": Method()})()

    def wait(self, refs, num_returns: int = 1):
        first = min(refs, key=lambda ref: ref.finish)
        self.now = max(self.now, first.finish)
        return [first], [ref for ref in refs if ref is not first]

    def get(self, ref):
        where, result = ref.run()
        self.finished_order.append(result["tag"])
        return where, result


def _double(model, job: dict) -> dict:
    """A module-level call as the pool sends them: its result says which job it was."""
    if job.get("fail"):
        raise ray.exceptions.WorkerCrashedError()
    return {"tag": job["tag"], "value": 2 * job["value"], "model": model}


def test_pool_map_gives_results_matched_to_their_jobs_when_they_finish_out_of_order():
    from label_anything.app.ray_pool import CALLS_PER_WORKER, RayPool

    scripted = _ScriptedRay()
    pool = RayPool(scripted, [scripted.actor("w0"), scripted.actor("w1")], "model-id", ["w0", "w1"])
    durations = [9, 1, 5, 1, 1, 7, 2, 1, 3, 1, 8, 1]
    jobs = [{"tag": f"job{i}", "value": i, "duration": d} for i, d in enumerate(durations)]
    taken: list[int] = []

    def calls():
        for i, job in enumerate(jobs):
            taken.append(i)
            yield job["tag"], (job,)

    yielded = []
    for tag, where, result in pool.map(_double, calls()):
        # never more than 2 * CALLS_PER_WORKER per worker taken ahead of what was handed back
        assert len(taken) - len(yielded) <= 2 * CALLS_PER_WORKER * 2
        yielded.append((tag, where, result))
    assert [tag for tag, _, _ in yielded] == [job["tag"] for job in jobs]  # input order
    for (tag, where, result), job in zip(yielded, jobs, strict=True):
        assert result == {"tag": tag, "value": 2 * job["value"], "model": "model"} and where in ("w0", "w1")
    assert scripted.finished_order != [job["tag"] for job in jobs]  # they did finish out of order
    assert {where for _, where, _ in yielded} == {"w0", "w1"}


def test_pool_map_turns_a_worker_failure_into_one_line():
    from label_anything.app.ray_pool import RayPool
    from label_anything.errors import LabelAnythingError

    scripted = _ScriptedRay()
    pool = RayPool(scripted, [scripted.actor("w0")], "model-id", ["w0"])
    jobs = [{"tag": "a", "value": 1, "duration": 1}, {"tag": "b", "value": 2, "duration": 1, "fail": True}]
    results = pool.map(_double, ((job["tag"], (job,)) for job in jobs))
    assert next(results)[0] == "a"
    with pytest.raises(LabelAnythingError, match=r"^Ray worker failed on b: .*run the command again to resume"):
        next(results)
