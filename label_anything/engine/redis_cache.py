"""The shared level of the embedding cache: Redis, so that every backend process sees every embedding.

``EmbeddingCache`` (cache.py) asks memory first, then this level, then its disk folder. Entries are the
same ``.npz`` bytes as the disk level (no pickle), stored under ``label-anything:embedding:<model>/<image>``
with ``SET key value EX ttl``; a hit refreshes the TTL, so images in use stay and forgotten ones expire.
Redis itself should run with a memory cap and LRU eviction (``maxmemory 2gb``, ``maxmemory-policy
allkeys-lru``): then it can never grow past its budget, whatever the TTL.

Redis is an accelerator, never a dependency of a click: when it cannot be reached, one warning is logged,
the cache keeps working from memory and disk, and Redis is tried again a few seconds later.

Two processes missing the same image do not both encode it: the first takes a lock key
(``SET NX`` with an expiry, so a crashed process cannot hold it forever), the others wait for its value.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from label_anything.errors import LabelAnythingError

log = logging.getLogger(__name__)

CACHE_URL_ENV = "LABEL_ANYTHING_CACHE_URL"
CACHE_TTL_ENV = "LABEL_ANYTHING_CACHE_TTL"
KEY_PREFIX = "label-anything:"
DEFAULT_TTL_S = 7 * 24 * 3600
"""A week: long enough for a labeling campaign's working set, short enough that old models' entries go."""

SCHEMES = ("redis", "rediss", "unix")


class SharedCacheError(LabelAnythingError):
    """The shared cache cannot be set up as asked (malformed URL, redis-py missing)."""


def check_cache_url(url: str) -> str:
    """``url`` if it is a usable Redis URL (``redis://HOST[:PORT][/DB]``, ``rediss://…``, ``unix:///path``).

    Raises:
        SharedCacheError: with what is wrong, before any connection is tried.
    """
    try:
        parts = urlsplit(url.strip())
        _ = parts.port  # a non-numeric or out-of-range port raises ValueError here
    except ValueError as exc:
        raise SharedCacheError(f"--cache-url {_redacted(url)!r}: {exc}") from None
    if parts.scheme not in SCHEMES:
        raise SharedCacheError(
            f"--cache-url {_redacted(url)!r}: expected redis://HOST:PORT/DB (or rediss://, unix://), "
            f"got scheme {parts.scheme or 'none'!r}"
        )
    if parts.scheme == "unix":
        if not parts.path:
            raise SharedCacheError(f"--cache-url {_redacted(url)!r}: unix:// needs a socket path")
        return url.strip()
    if not parts.hostname:
        raise SharedCacheError(f"--cache-url {_redacted(url)!r}: no host (redis://HOST:PORT/DB)")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise SharedCacheError(f"--cache-url {_redacted(url)!r}: the database after the host is a number, got {db!r}")
    return url.strip()


def _redacted(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return parts._replace(netloc=user + netloc).geturl()


def _import_redis():
    try:
        import redis
    except ImportError:
        raise SharedCacheError(
            "--cache-url needs the redis package: pip install 'label-anything[redis]'"
        ) from None
    return redis


@dataclass
class Claim:
    """The right to compute one entry. ``mine`` False: another process is computing it."""

    mine: bool
    _lock: Any = None

    def release(self) -> None:
        """Let waiting processes go on (they find the value, or compute it themselves)."""
        if self._lock is None:
            return
        import redis

        # expired (a slow encode) or Redis gone: the lock key expires on its own
        with contextlib.suppress(redis.RedisError):
            self._lock.release()


class RedisLevel:
    """Bytes by cache key in Redis; never raises on Redis trouble (warns once, then stays out of the way).

    Args:
        url: ``redis://HOST:PORT/DB`` (checked with ``check_cache_url``).
        ttl_s: expiry of an entry, refreshed on every hit.
        lock_s: how long a compute lock lives; a process waits at most this long for another's result.
        retry_after_s: after a failure, Redis is left alone this long before being tried again, so a dead
            server costs one failed connection every few seconds, not one per click.
        timeout_s: connect and read timeout of each Redis call.
    """

    def __init__(
        self,
        url: str,
        ttl_s: int = DEFAULT_TTL_S,
        lock_s: float = 120.0,
        retry_after_s: float = 5.0,
        timeout_s: float = 2.0,
    ) -> None:
        redis = _import_redis()
        self.url = check_cache_url(url)
        self.ttl_s = ttl_s
        self.lock_s = lock_s
        self.retry_after_s = retry_after_s
        self._errors = redis.RedisError
        try:
            self._client = redis.Redis.from_url(
                self.url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s, health_check_interval=30
            )
        except ValueError as exc:  # redis-py's own URL checks (query options, ...)
            raise SharedCacheError(f"--cache-url {_redacted(url)!r}: {exc}") from None
        self._state = threading.Lock()
        self._down = False
        self._retry_at = 0.0

    def __repr__(self) -> str:
        return f"RedisLevel({_redacted(self.url)!r})"

    @property
    def display_url(self) -> str:
        return _redacted(self.url)

    # -- health ------------------------------------------------------------------------------------
    def _usable(self) -> bool:
        with self._state:
            return not self._down or time.monotonic() >= self._retry_at

    def _failed(self, exc: Exception) -> None:
        with self._state:
            self._retry_at = time.monotonic() + self.retry_after_s
            if self._down:
                return
            self._down = True
        log.warning(
            "shared embedding cache: Redis at %s failed (%s: %s); using memory and disk only, retrying every %.0f s",
            self.display_url, type(exc).__name__, exc, self.retry_after_s,
        )

    def _worked(self) -> None:
        with self._state:
            if not self._down:
                return
            self._down = False
        log.info("shared embedding cache: Redis at %s is back", self.display_url)

    def ping(self) -> bool:
        """True when Redis answers (warns once when it does not)."""
        try:
            self._client.ping()
        except self._errors as exc:
            self._failed(exc)
            return False
        self._worked()
        return True

    # -- entries -----------------------------------------------------------------------------------
    @staticmethod
    def data_key(key: str) -> str:
        return f"{KEY_PREFIX}embedding:{key}"

    @staticmethod
    def lock_key(key: str) -> str:
        return f"{KEY_PREFIX}encoding:{key}"

    def get(self, key: str) -> bytes | None:
        """The stored bytes (TTL refreshed), or None when absent or Redis is unreachable."""
        if not self._usable():
            return None
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.get(self.data_key(key))
            pipe.expire(self.data_key(key), self.ttl_s)
            data, _ = pipe.execute()
        except self._errors as exc:
            self._failed(exc)
            return None
        self._worked()
        return data

    def contains(self, key: str) -> bool:
        if not self._usable():
            return False
        try:
            found = bool(self._client.exists(self.data_key(key)))
        except self._errors as exc:
            self._failed(exc)
            return False
        self._worked()
        return found

    def put(self, key: str, data: bytes) -> None:
        """``SET key data EX ttl``; a failure is logged (once) and otherwise ignored."""
        if not self._usable():
            return
        try:
            self._client.set(self.data_key(key), data, ex=self.ttl_s)
        except self._errors as exc:
            self._failed(exc)
            return
        self._worked()

    def delete(self, key: str) -> None:
        if not self._usable():
            return
        try:
            self._client.delete(self.data_key(key))
        except self._errors as exc:
            self._failed(exc)

    # -- single flight across processes ------------------------------------------------------------
    def claim(self, key: str) -> Claim:
        """Take the compute lock of ``key`` (``SET NX`` with expiry ``lock_s``).

        Returns ``Claim(mine=True)`` when this process should compute (it holds the lock, or Redis is
        unreachable and every process is on its own), ``Claim(mine=False)`` when another process holds it.
        """
        if not self._usable():
            return Claim(mine=True)
        lock = self._client.lock(self.lock_key(key), timeout=self.lock_s, blocking=False, thread_local=False)
        try:
            mine = lock.acquire()  # a fresh random token: only this claim can release it
        except self._errors as exc:
            self._failed(exc)
            return Claim(mine=True)
        self._worked()
        return Claim(mine=True, _lock=lock) if mine else Claim(mine=False)

    def wait_for(self, key: str, poll_s: float = 0.05) -> bytes | None:
        """Wait while another process computes ``key``: its bytes once stored, or None when that process
        gave up (lock released or expired without a value), ``lock_s`` passed, or Redis failed."""
        deadline = time.monotonic() + self.lock_s
        while time.monotonic() < deadline and self._usable():
            try:
                pipe = self._client.pipeline(transaction=False)
                pipe.exists(self.data_key(key))
                pipe.exists(self.lock_key(key))
                stored, locked = pipe.execute()
            except self._errors as exc:
                self._failed(exc)
                return None
            if stored or not locked:
                return self.get(key)
            time.sleep(poll_s)
        return None

    def close(self) -> None:
        with contextlib.suppress(self._errors):
            self._client.close()


def check_shared_cache_arguments(url: str) -> None:
    """Raise SharedCacheError now when ``url`` is malformed or redis-py is missing (connects to nothing)."""
    check_cache_url(url)
    _import_redis()





