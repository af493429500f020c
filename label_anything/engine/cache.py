"""Embedding cache: memory (LRU, bounded by bytes), then Redis (optional, shared by processes and
machines; see redis_cache.py), then disk (atomic files, bounded by bytes).

Keyed by (model id incl. weights digest, image content digest), so a cached embedding is never used
with other weights or another picture. Features are stored as float16 by default: half the bytes,
and the masks decoded from them are measured equal to the float32 ones (IoU >= 0.999, see tests).
A damaged disk or Redis entry is recomputed, never trusted; a disk that fails degrades to memory only,
a Redis that fails is skipped (one warning) until it answers again.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from label_anything.engine.types import Embedding

if TYPE_CHECKING:
    from label_anything.engine.redis_cache import RedisLevel

log = logging.getLogger(__name__)

_FORMAT = 1


def cache_key(model_id: str, image_digest: str) -> str:
    """The cache key of an embedding; also its relative path on disk."""
    return f"{model_id}/{image_digest}"


def embedding_to_bytes(embedding: Embedding) -> bytes:
    """Serialize an embedding to an ``.npz`` (no pickle), metadata in a JSON member."""
    meta = {
        "format": _FORMAT,
        "model_id": embedding.model_id,
        "image_digest": embedding.image_digest,
        "original_size": list(embedding.original_size),
        "input_size": list(embedding.input_size),
    }
    buf = io.BytesIO()
    np.savez(buf, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **embedding.arrays)
    return buf.getvalue()


def embedding_from_bytes(data: bytes) -> Embedding:
    """Inverse of ``embedding_to_bytes``; raises ValueError on anything malformed."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            meta = json.loads(bytes(npz["__meta__"]).decode())
            arrays = {k: np.array(npz[k]) for k in npz.files if k != "__meta__"}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a cached embedding ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT or not arrays:
        raise ValueError("cached embedding has an unknown format")
    return Embedding(
        model_id=str(meta["model_id"]),
        image_digest=str(meta["image_digest"]),
        original_size=tuple(int(v) for v in meta["original_size"]),  # type: ignore[arg-type]
        input_size=tuple(int(v) for v in meta["input_size"]),  # type: ignore[arg-type]
        arrays=arrays,
    )


def entry_for_key(key: str, data: bytes) -> Embedding:
    """The embedding stored as ``data`` under ``key``; ValueError when damaged or another key's entry."""
    embedding = embedding_from_bytes(data)
    model_id, image_digest = key.split("/", 1)
    if embedding.model_id != model_id or embedding.image_digest != image_digest:
        raise ValueError("entry belongs to another key")
    return embedding


def to_storage_dtype(embedding: Embedding, dtype: np.dtype | type = np.float16) -> Embedding:
    """Floating arrays cast to ``dtype`` (integer arrays, e.g. a classical image, untouched)."""
    arrays = {
        k: (a.astype(dtype) if np.issubdtype(a.dtype, np.floating) and a.dtype != dtype else a)
        for k, a in embedding.arrays.items()
    }
    return Embedding(embedding.model_id, embedding.image_digest, embedding.original_size, embedding.input_size, arrays)


@dataclass
class CacheStats:
    """Where ``get``/``get_or_compute`` found embeddings, counted since the cache was made."""

    memory: int = 0
    shared: int = 0
    disk: int = 0
    computed: int = 0


class EmbeddingCache:
    """Thread-safe cache (memory → Redis → disk) with single-flight computation.

    Args:
        max_memory_bytes: LRU budget in memory (array bytes).
        disk_dir: folder for the disk level, or None for none.
        max_disk_bytes: budget on disk (``serve``/``precompute`` ``--cache-disk-gb``); least recently used
            files go first. A SAM / MobileSAM embedding takes about 2 MiB (float16), HQ-SAM 6, SAM 2.1 8.
        dtype: storage dtype of floating arrays (float16 halves the bytes; float32 keeps them exact).
        shared: the Redis level (``redis_cache.RedisLevel``), or None. With it, an embedding computed by
            one process is found by the others, and two processes missing the same image encode it once.
    """

    def __init__(
        self,
        max_memory_bytes: int = 512 * 2**20,
        disk_dir: Path | None = None,
        max_disk_bytes: int = 4 * 2**30,
        dtype: np.dtype | type = np.float16,
        shared: RedisLevel | None = None,
    ) -> None:
        self.max_memory_bytes = max_memory_bytes
        self.max_disk_bytes = max_disk_bytes
        self.dtype = dtype
        self.shared = shared
        self.stats = CacheStats()
        self._memory: OrderedDict[str, Embedding] = OrderedDict()
        self._memory_bytes = 0
        self._inflight: dict[str, Future[Embedding]] = {}
        self._lock = threading.Lock()
        self._disk_lock = threading.Lock()
        self._disk = _checked_disk(_DiskLevel(Path(disk_dir), max_disk_bytes)) if disk_dir is not None else None

    # -- public ------------------------------------------------------------------------------------
    @property
    def memory_bytes(self) -> int:
        return self._memory_bytes

    @property
    def disk_dir(self) -> Path | None:
        """The disk level's folder; None when there is none, or after the disk failed (memory only)."""
        disk = self._disk
        return disk.root if disk is not None else None

    def __len__(self) -> int:
        return len(self._memory)

    def get(self, key: str) -> Embedding | None:
        """The cached embedding, from memory, Redis or disk, or None."""
        with self._lock:
            hit = self._memory.get(key)
            if hit is not None:
                self._memory.move_to_end(key)
                self.stats.memory += 1
                return hit
        found = self._shared_read(key)
        if found is not None:
            self._memory_put(key, found)
            return found
        found = self._disk_read(self._disk, key)
        if found is not None:
            self._count("disk")
            self._memory_put(key, found)
            if self.shared is not None:  # share what this machine had on disk with the other machines
                self.shared.put(key, embedding_to_bytes(found))
        return found

    def contains(self, key: str, *, share: bool = False) -> bool:
        """True when an entry is in memory, Redis or on disk (does not load it).

        share: also copy an entry found only on disk into Redis, so other machines get it too
            (``precompute --cache-url`` over images encoded before). The click path leaves it off: its
            ``get`` that follows reads the disk and shares the entry once.
        """
        with self._lock:
            if key in self._memory:
                return True
        if self.shared is not None and self.shared.contains(key):
            return True
        disk = self._disk
        on_disk = disk is not None and _is_file(disk.path(key))
        if on_disk and share and self.shared is not None:
            found = self._disk_read(disk, key)
            if found is None:
                return False  # damaged (and removed)
            self.shared.put(key, embedding_to_bytes(found))
        return on_disk

    def put(self, key: str, embedding: Embedding) -> Embedding:
        """Store (in the storage dtype) in every level and return the stored value."""
        stored = to_storage_dtype(embedding, self.dtype)
        self._memory_put(key, stored)
        disk = self._disk
        if self.shared is not None or disk is not None:
            data = embedding_to_bytes(stored)
            if self.shared is not None:
                self.shared.put(key, data)
            if disk is not None:
                self._disk_write(disk, key, data)
        return stored

    def get_or_compute(self, key: str, compute: Callable[[], Embedding]) -> Embedding:
        """The cached embedding, else compute it once even when many threads ask at the same time.

        Returns the *stored* value (storage dtype), so the first click and every later one decode
        from identical numbers.
        """
        hit = self.get(key)
        if hit is not None:
            return hit
        with self._lock:
            future = self._inflight.get(key)
            owner = future is None
            if owner:
                future = Future()
                self._inflight[key] = future
        assert future is not None
        if not owner:
            return future.result()
        try:
            result = self._compute_once(key, compute)
        except BaseException as exc:
            future.set_exception(exc)
            raise
        else:
            future.set_result(result)
            return result
        finally:
            with self._lock:
                self._inflight.pop(key, None)

    def _compute_once(self, key: str, compute: Callable[[], Embedding]) -> Embedding:
        """``compute()`` and store it, unless another process sharing Redis is computing ``key``: then
        its result (or our own, when that process gives up)."""
        if self.shared is None:
            return self._computed(key, compute)
        claim = self.shared.claim(key)
        try:
            if not claim.mine:
                log.info("embedding %s is being computed by another process; waiting for it", _short(key))
                found = self._shared_entry(key, self.shared.wait_for(key))
                if found is not None:
                    self._memory_put(key, found)
                    return found
            else:
                # the holder before us may have stored it between our miss and our claim
                found = self._shared_read(key)
                if found is not None:
                    self._memory_put(key, found)
                    return found
            return self._computed(key, compute)
        finally:
            claim.release()

    def _computed(self, key: str, compute: Callable[[], Embedding]) -> Embedding:
        result = self.put(key, compute())
        self._count("computed")
        return result

    def _count(self, level: str) -> None:
        with self._lock:
            setattr(self.stats, level, getattr(self.stats, level) + 1)

    def clear_memory(self) -> None:
        with self._lock:
            self._memory.clear()
            self._memory_bytes = 0

    # -- memory level ------------------------------------------------------------------------------
    def _memory_put(self, key: str, embedding: Embedding) -> None:
        size = embedding.nbytes
        if size > self.max_memory_bytes:
            return
        with self._lock:
            old = self._memory.pop(key, None)
            if old is not None:
                self._memory_bytes -= old.nbytes
            self._memory[key] = embedding
            self._memory_bytes += size
            while self._memory_bytes > self.max_memory_bytes and self._memory:
                _, evicted = self._memory.popitem(last=False)
                self._memory_bytes -= evicted.nbytes

    # -- shared level (Redis) ----------------------------------------------------------------------
    def _shared_read(self, key: str) -> Embedding | None:
        if self.shared is None:
            return None
        t0 = time.perf_counter()
        found = self._shared_entry(key, self.shared.get(key))
        if found is not None:
            log.info("embedding %s loaded from the shared cache (Redis) in %.0f ms",
                     _short(key), (time.perf_counter() - t0) * 1e3)
        return found

    def _shared_entry(self, key: str, data: bytes | None) -> Embedding | None:
        """``data`` read from Redis as the entry of ``key``; a damaged entry is deleted (and recomputed)."""
        if data is None or self.shared is None:
            return None
        try:
            found = entry_for_key(key, data)
        except ValueError as exc:
            log.warning("embedding cache: the Redis entry of %s is damaged (%s); recomputing", _short(key), exc)
            self.shared.delete(key)
            return None
        self._count("shared")
        return found

    # -- disk level --------------------------------------------------------------------------------
    # Every operation reads ``self._disk`` once and works on that value: a disk error met by one thread
    # swaps the level out for all later operations, but never changes the folder another thread is
    # using half-way through its own read or write.
    def _disk_read(self, disk: _DiskLevel | None, key: str) -> Embedding | None:
        if disk is None:
            return None
        path = disk.path(key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            log.warning("embedding cache: cannot read %s (%s); recomputing", path, exc.strerror or exc)
            return None
        try:
            embedding = entry_for_key(key, data)
        except ValueError as exc:
            log.warning("embedding cache: %s is damaged (%s); recomputing", path.name, exc)
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: evicted last
        return embedding

    def _disk_write(self, disk: _DiskLevel, key: str, data: bytes) -> None:
        """Write the serialized entry ``data`` of ``key``; a failing disk drops the disk level."""
        path = disk.path(key)
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Unique temp name + rename: two processes writing the same entry each rename a
            # complete file; a reader never sees a half-written one.
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
            tmp = None
        except OSError as exc:
            self._disk_failed(disk, f"cannot write {path} ({exc.strerror or exc})")
            return
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    Path(tmp).unlink(missing_ok=True)
        self._disk_evict(disk)

    def _disk_failed(self, disk: _DiskLevel, reason: str) -> None:
        """Memory only from now on, said once: only the thread that swaps ``disk`` out logs it."""
        with self._lock:
            if self._disk is not disk:
                return
            self._disk = None
        log.warning("embedding cache: %s; keeping embeddings in memory only", reason)

    def _disk_evict(self, disk: _DiskLevel) -> None:
        """Remove the least recently used files until the folder fits ``disk.max_bytes``."""
        with self._disk_lock:
            files = []
            for path in _entry_files(disk.root):
                try:
                    st = path.stat()
                except OSError:  # removed meanwhile (another process evicting, or the folder went away)
                    continue
                files.append((st.st_mtime_ns, st.st_size, path))
            total = sum(size for _, size, _ in files)
            for _, size, path in sorted(files, key=lambda t: t[0]):
                if total <= disk.max_bytes:
                    break
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
                total -= size


@dataclass(frozen=True)
class _DiskLevel:
    """The disk level of an ``EmbeddingCache``: its folder and byte budget. Never changed in place; the
    cache replaces it as a whole (by None when the disk fails)."""

    root: Path
    max_bytes: int

    def path(self, key: str) -> Path:
        return self.root / (key + ".npz")


def _checked_disk(disk: _DiskLevel) -> _DiskLevel | None:
    """``disk`` when its folder can be created and written to, else None (and one warning)."""
    try:
        disk.root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=disk.root, prefix=".probe-"):
            pass
    except OSError as exc:
        log.warning("embedding cache: %s is not writable (%s); keeping embeddings in memory only",
                    disk.root, exc.strerror or exc)
        return None
    return disk


def _entry_files(root: Path) -> list[Path]:
    """The ``<model>/<digest>.npz`` files under ``root``; a folder removed or replaced while it is listed
    (by another process, or by a user) is skipped, where ``Path.glob`` would raise FileNotFoundError."""
    try:
        with os.scandir(root) as it:
            folders = [entry.path for entry in it if _is_dir(entry)]
    except OSError:
        return []
    files = []
    for folder in folders:
        try:
            with os.scandir(folder) as it:
                files.extend(Path(entry.path) for entry in it if entry.name.endswith(".npz"))
        except OSError:
            continue
    return files


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False instead of an error when the folder cannot be read."""
    try:
        return path.is_file()
    except OSError:
        return False


def _short(key: str) -> str:
    """``model/digest`` shortened for a log line: the model id and the digest's first 12 characters."""
    model_id, _, digest = key.partition("/")
    return f"{model_id}/{digest[:12]}"
