"""``--ray-address``: run ``boxes-to-masks`` and ``precompute`` on a Ray cluster.

A pool of Ray actors (the *workers*) each load the model once, from the model options the driver was
given (``ModelOptions.for_worker``: the checkpoint path must be readable at that path on every node, and
label-anything installed there). The driver (the machine running the command) reads the inputs, sends
each image to a worker as one becomes free, and takes the results back in input order, so the files it
writes are those a local run writes. At most a few images per worker are in flight at a time: memory stays
bounded however large the dataset. Nothing here imports ``ray`` before ``--ray-address`` asks for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from label_anything.errors import LabelAnythingError

if TYPE_CHECKING:
    from label_anything.app.model_options import ModelOptions
    from label_anything.app.precompute import ImageSource, PrecomputeReport
    from label_anything.engine.cache import EmbeddingCache
    from label_anything.engine.types import SegmentationModel

log = logging.getLogger(__name__)

RAY_ADDRESS_ENV = "LABEL_ANYTHING_RAY_ADDRESS"
LOCAL_CLUSTER = "local"
"""``--ray-address local``: start a throwaway Ray instance on this machine (all its CPUs and GPUs)."""

CALLS_PER_WORKER = 2
"""Calls queued on one worker at a time: it starts the next image while the last result travels back."""
CLIENT_ATTEMPTS = 3
"""Tries to connect through Ray Client (``ray://``) when the head fails to start the client's server."""
STARTUP_TIMEOUT_S = 600.0
"""How long the workers may take to start and load the model (a large checkpoint on a network disk)."""


@dataclass(frozen=True)
class PoolOptions:
    """Where and how many workers to run; ``None`` fields are chosen from the cluster (see ``worker_layout``)."""

    address: str
    workers: int | None = None
    gpus_per_worker: float | None = None
    cpus_per_worker: int | None = None


def worker_layout(nodes: list[dict[str, float]], options: PoolOptions) -> tuple[int, float, int]:
    """(workers, GPUs per worker, CPUs per worker) for a cluster whose alive nodes have ``nodes`` resources.

    Defaults: on a cluster with GPUs, one worker per GPU with 1 CPU each; without, workers of up to 4 CPUs
    (PyTorch's encoder gains little beyond that), as many as the nodes hold. A worker never asks for more
    of a resource than the largest node has: it would wait forever.
    """
    gpus_on = [node.get("GPU", 0.0) for node in nodes]
    cpus_on = [node.get("CPU", 0.0) for node in nodes]
    gpus = options.gpus_per_worker if options.gpus_per_worker is not None else (1.0 if max(gpus_on, default=0) else 0.0)
    if options.cpus_per_worker is not None:
        cpus = options.cpus_per_worker
    else:
        cpus = 1 if gpus else max(1, min(4, int(max(cpus_on, default=1))))
    if options.workers is not None:
        return options.workers, gpus, cpus
    fits = 0
    for node_gpus, node_cpus in zip(gpus_on, cpus_on, strict=True):
        by_cpu = int(node_cpus // cpus)
        fits += min(by_cpu, int(node_gpus // gpus)) if gpus else by_cpu
    return max(1, fits), gpus, cpus


# -- the workers -------------------------------------------------------------------------------------
def load_worker_model(options: dict[str, Any]) -> SegmentationModel:
    """Load the model ``options`` (``ModelOptions.for_worker()``) name, as the driver's command line would:
    warns when ``auto`` fell back to the weight-free engine."""
    from label_anything.engine import load_model

    model = load_model(options["model_name"], options["sam_config"], options["checkpoint"],
                       device=options["device"], cache_dir=options["cache_dir"],
                       decoder=options.get("decoder") or "torch")
    if options["model_name"] == "auto" and model.info.name == "classical":
        log.warning("no SAM checkpoint in the cache: using the weight-free classical engine (GrabCut); for "
                    "real SAM masks run `label-anything download mobile_sam` or pass --model-name and --checkpoint")
    return model


class ModelWorker:
    """The body of one Ray actor: loads the model once, then runs ``fn(model, *args)`` for each call.

    ``fn`` is a module-level function of label_anything (Ray sends it by name, the worker imports it).
    """

    def __init__(self, options: dict[str, Any], threads: int) -> None:
        import torch

        # One worker's share of the node: without this every worker would spread over all the node's cores.
        torch.set_num_threads(threads)
        self.model = load_worker_model(options)
        self.where = f"{socket.gethostname()}:{os.getpid()}"

    def describe(self) -> tuple[str, str]:
        """(model id, ``host:pid`` of this worker)."""
        return self.model.info.model_id, self.where

    def run(self, fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
        """``(host:pid, fn(model, *args))``."""
        return self.where, fn(self.model, *args)


class RayPool:
    """Started workers that all loaded the same model; ``map`` spreads calls over them."""

    def __init__(self, ray: Any, actors: list[Any], model_id: str, workers: list[str]) -> None:
        self._ray = ray
        self._actors = actors
        self.model_id = model_id
        self.workers = workers  # host:pid of each worker

    def map(self, fn: Callable[..., Any], calls: Iterable[tuple[Any, tuple[Any, ...]]]) -> Iterator[
        tuple[Any, str, Any]
    ]:
        """Run ``fn(model, *args)`` on the workers for each ``(tag, args)`` of ``calls``, in input order.

        ``calls`` is read lazily: a call is taken only when a worker can queue it and fewer than
        ``CALLS_PER_WORKER * 2`` results per worker wait for an earlier, slower one, so memory stays bounded.

        Yields:
            (tag, host:pid of the worker that ran it, fn's result), in the order of ``calls``.
        """
        ray = self._ray
        load = {i: 0 for i in range(len(self._actors))}  # calls queued on each worker
        in_flight: dict[Any, tuple[int, int, Any]] = {}  # object ref → (position, worker, tag)
        finished: dict[int, tuple[Any, str, Any]] = {}
        max_ahead = 2 * CALLS_PER_WORKER * len(self._actors)
        source, submitted, yielded, exhausted = iter(calls), 0, 0, False
        while True:
            while not exhausted and submitted - yielded < max_ahead:
                worker = min(load, key=load.__getitem__)
                if load[worker] >= CALLS_PER_WORKER:
                    break
                try:
                    tag, args = next(source)
                except StopIteration:
                    exhausted = True
                    break
                ref = self._actors[worker].run.remote(fn, *args)
                in_flight[ref] = (submitted, worker, tag)
                load[worker] += 1
                submitted += 1
            if not in_flight:
                return
            done, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in done:
                position, worker, tag = in_flight.pop(ref)
                load[worker] -= 1
                try:
                    where, result = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    raise LabelAnythingError(f"Ray worker failed on {tag}: {_first_line(exc)} (finished work is kept: "
                                             "run the command again to resume)") from None
                finished[position] = (tag, where, result)
            while yielded in finished:
                yield finished.pop(yielded)
                yielded += 1


def import_ray() -> Any:
    """The ``ray`` module, or a one-line error saying how to get it."""
    try:
        import ray
    except ImportError:
        raise LabelAnythingError(
            "--ray-address needs Ray: pip install 'label-anything[ray]' (on the driver and every node)"
        ) from None
    return ray


def connect(ray: Any, address: str) -> None:
    """Join the cluster at ``address`` (or start a local one for ``local``); a one-line error if it fails."""
    _check_reachable(address)
    quiet = {"log_to_driver": True, "configure_logging": True, "logging_level": logging.WARNING}
    for attempt in range(1, CLIENT_ATTEMPTS + 1):
        try:
            if address == LOCAL_CLUSTER:
                ray.init(include_dashboard=False, **quiet)
            else:
                ray.init(address=address, **quiet)
            return
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError ... depending on the address
            # The head's Ray Client proxy starts a server process per client; on a busy head that start can
            # fail once and work the next time, so a ray:// connection gets a few tries.
            transient = address.startswith("ray://") and "client server failed" in str(exc)
            if not transient or attempt == CLIENT_ATTEMPTS:
                raise LabelAnythingError(f"cannot reach the Ray cluster at {address!r}: {_first_line(exc)}") from None
            log.warning("Ray: the cluster's client server did not start (try %d of %d); trying again",
                        attempt, CLIENT_ATTEMPTS)
            with contextlib.suppress(Exception):
                ray.shutdown()
            time.sleep(2.0 * attempt)


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail at once when nothing listens at a ``HOST:PORT`` or ``ray://HOST:PORT`` address: Ray itself
    keeps retrying an unreachable head for minutes. ``auto`` and ``local`` need no check (Ray answers fast)."""
    if address in ("auto", LOCAL_CLUSTER):
        return
    scheme, _, rest = address.rpartition("://")
    host, _, port = rest.split("/", 1)[0].rpartition(":")
    if not host:  # no port given: Ray's defaults
        host, port = rest.split("/", 1)[0], "10001" if scheme == "ray" else "6379"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        raise LabelAnythingError(f"cannot reach the Ray cluster at {address!r}: {reason}") from None


@contextlib.contextmanager
def ray_pool(options: PoolOptions, model: dict[str, Any]) -> Iterator[RayPool]:
    """Connect to the cluster, start the workers and wait until each loaded the model; stop them after.

    Args:
        options: address and pool size.
        model: the model options, ``ModelOptions.for_worker()``.

    Raises:
        LabelAnythingError: Ray missing, cluster unreachable, no worker could load the model, or the workers
            loaded different weights (a checkpoint path that holds different files on different nodes).
    """
    ray = import_ray()
    if model.get("device") == "cpu" and options.gpus_per_worker is None:
        options = dataclasses.replace(options, gpus_per_worker=0.0)  # --device cpu: reserve no GPU
    connect(ray, options.address)
    actors: list[Any] = []
    try:
        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
        workers, gpus, cpus = worker_layout(nodes, options)
        log.info("Ray: starting %d worker(s) (%s GPU, %d CPU each) on %d node(s)", workers, gpus, cpus, len(nodes))
        actor_class = ray.remote(ModelWorker).options(num_cpus=cpus, num_gpus=gpus)
        actors = [actor_class.remote(model, cpus) for _ in range(workers)]
        started = _wait_started(ray, actors)
        ids = {model_id for model_id, _ in started.values()}
        if len(ids) > 1:
            raise LabelAnythingError(f"the Ray workers loaded different models ({', '.join(sorted(ids))}): "
                                     "the checkpoint path must hold the same file on every node")
        ready = list(started)
        yield RayPool(ray, ready, ids.pop(), [where for _, where in started.values()])
    finally:
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)
        ray.shutdown()


def _wait_started(ray: Any, actors: list[Any]) -> dict[Any, tuple[str, str]]:
    """actor → (model id, host:pid) of every worker that started within ``STARTUP_TIMEOUT_S``."""
    refs = {actor.describe.remote(): actor for actor in actors}
    done, pending = ray.wait(list(refs), num_returns=len(refs), timeout=STARTUP_TIMEOUT_S)
    started: dict[Any, tuple[str, str]] = {}
    errors: list[str] = []
    for ref in done:
        try:
            started[refs[ref]] = ray.get(ref)
        except ray.exceptions.RayError as exc:
            errors.append(_first_line(exc))
    if not started:
        reason = errors[0] if errors else f"none started within {STARTUP_TIMEOUT_S:.0f} s (not enough free CPUs/GPUs?)"
        raise LabelAnythingError(f"no Ray worker could load the model: {reason}")
    if errors or pending:
        log.warning("Ray: %d of %d workers started (%s); going on with those", len(started), len(actors),
                    errors[0] if errors else "the others are still waiting for CPUs/GPUs")
        for ref in pending:
            ray.kill(refs[ref])
    return started


def _first_line(exc: BaseException) -> str:
    """The last non-empty line of a (possibly multi-line, traceback-carrying) Ray error: its actual message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


# -- precompute on the pool --------------------------------------------------------------------------
def encode_for_cache(model: SegmentationModel, image: np.ndarray, digest: str, dtype: str) -> tuple[bytes, float]:
    """On a worker: encode ``image`` (H, W, 3) uint8 and serialize it as the cache stores it.

    Returns:
        (``embedding_to_bytes`` of the embedding in ``dtype``, encode seconds).
    """
    from label_anything.engine import encode
    from label_anything.engine.cache import embedding_to_bytes, to_storage_dtype

    t0 = time.perf_counter()
    embedding = encode(model, image, digest)
    seconds = time.perf_counter() - t0
    # Cast before sending: float16 halves the bytes on the wire, and the driver's cache would cast anyway.
    return embedding_to_bytes(to_storage_dtype(embedding, np.dtype(dtype))), seconds


def precompute_on_pool(
    pool: RayPool, source: ImageSource, cache: EmbeddingCache, *, progress: bool = True, total: int | None = None
) -> PrecomputeReport:
    """``precompute`` with the encoding done by ``pool``'s workers and the storing by the driver's ``cache``
    (so worker nodes need no access to the cache folder). Images are read here, on the driver."""
    from tqdm import tqdm

    from label_anything.app.precompute import DiskBudget, PrecomputeReport
    from label_anything.engine.cache import cache_key, embedding_from_bytes

    report = PrecomputeReport()
    budget = DiskBudget.of(cache, total)
    bar = tqdm(total=total, unit="img", desc="precompute (ray)", disable=not progress)
    dtype = np.dtype(cache.dtype).str

    def calls() -> Iterator[tuple[str, tuple[Any, ...]]]:
        for name, load in source:
            try:
                image, digest = load()
            except LabelAnythingError as exc:
                log.warning("%s: skipped (%s)", name, exc)
                report.failed.append(name)
                bar.update()
                continue
            key = cache_key(pool.model_id, digest)
            if cache.contains(key, share=True):
                report.cached += 1
                bar.update()
                continue
            yield key, (image, digest, dtype)

    for key, _, (data, seconds) in pool.map(encode_for_cache, calls()):
        cache.put(key, embedding_from_bytes(data))
        report.seconds += seconds
        report.encoded += 1
        budget.note(len(data), report.encoded + report.cached)
        bar.update()
        bar.set_postfix(encoded=report.encoded, cached=report.cached)
    bar.close()
    report.disk_cache_short = budget.short
    return report


def precompute_on_ray(
    options: PoolOptions, model: ModelOptions, source: ImageSource, cache: EmbeddingCache, *,
    progress: bool = True, total: int | None = None
) -> tuple[PrecomputeReport, str]:
    """``precompute --ray-address``: start the pool ``options`` describe, each worker loading ``model``, encode
    on it.

    Returns:
        (the report, the workers' model id).
    """
    with ray_pool(options, model.for_worker()) as pool:
        # each worker resolved `auto` on its own node: the driver's check before the start cannot see theirs
        model.refuse_classical_model("precompute", pool.model_id.split("-", 1)[0])
        return precompute_on_pool(pool, source, cache, progress=progress, total=total), pool.model_id
