"""A task's image reference → decoded pixels: uploads, local files, http(s) URLs, cloud URIs via presign.

| reference in task data          | where the bytes come from                                         |
|---------------------------------|-------------------------------------------------------------------|
| ``/data/upload/<p>/<file>``      | Label Studio, with its API key                                    |
| ``/data/local-files/?d=<path>``  | disk under ``LOCAL_FILES_DOCUMENT_ROOT`` (else Label Studio)       |
| ``http(s)://...``                | the URL (Label Studio's key only when it *is* Label Studio)        |
| ``s3://``, ``gs://``, ``azure-blob://`` ... | Label Studio's ``/tasks/<id>/presign/?fileuri=<b64>``  |

Local paths are confined to the document root: absolute paths, ``..`` and symlinks that lead out of it
are refused. Task data is written by whoever can import tasks, so a URL in it is not trusted: the backend
fetches only from Label Studio's own origin and from hosts on an explicit allow-list
(``--allow-image-host``); any other URL is refused before a connection is made. Redirects are followed
by hand, one hop at a time, and every hop is checked the same way, except hops that Label Studio itself
answered with (its presign endpoint redirects to the storage bucket it was configured with). The API key
is only ever sent to Label Studio's origin. Decoded images are kept in a small LRU so the clicks after
the first do not re-download; a local file's entry is keyed by its path and checked against the file's
size, modification time and inode on every fetch, so an image edited on disk is read again.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np

from label_anything.errors import ImageError
from label_anything.imaging.decode import DEFAULT_MAX_PIXELS, decode_image, image_digest

log = logging.getLogger(__name__)

CLOUD_SCHEMES = ("s3", "gs", "azure-blob", "azure-spi")
MAX_DOWNLOAD_BYTES = 256 * 2**20
MAX_REDIRECTS = 5
ALLOW_HOSTS_OPTION = "--allow-image-host"
ALLOW_HOSTS_ENV = "LABEL_ANYTHING_ALLOW_IMAGE_HOSTS"
_REFRESH_MARGIN_S = 30.0


class AccessDeniedError(ImageError):
    """The reference points outside what the backend is allowed to read."""


def _jwt_payload(token: str) -> dict | None:
    """The (unverified) payload of a JWT, or None when ``token`` is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, UnicodeDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


class LabelStudioAuth:
    """``Authorization`` for Label Studio from ``LABEL_STUDIO_API_KEY``.

    A personal access token (a JWT refresh token) is exchanged at ``/api/token/refresh/`` for a short
    lived access token, renewed shortly before it expires; a legacy key is sent as ``Token <key>``.
    """

    def __init__(self, base_url: str, api_key: str, client: httpx.Client) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key.strip()
        self.client = client
        payload = _jwt_payload(self.api_key)
        self.is_pat = payload is not None and payload.get("token_type") == "refresh"
        self._access: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()

    def header(self) -> str:
        if not self.is_pat:
            return f"Token {self.api_key}"
        with self._lock:
            if self._access is None or time.time() > self._expires - _REFRESH_MARGIN_S:
                self._refresh()
            return f"Bearer {self._access}"

    def invalidate(self) -> None:
        """Forget the access token (Label Studio refused it before its expiry): the next header refreshes."""
        with self._lock:
            self._access = None

    def _refresh(self) -> None:
        url = f"{self.base_url}/api/token/refresh/"
        try:
            response = self.client.post(url, json={"refresh": self.api_key})
        except httpx.HTTPError as exc:
            raise ImageError(f"cannot reach Label Studio at {self.base_url} ({exc})") from None
        if response.status_code != 200:
            raise ImageError(
                f"Label Studio refused LABEL_STUDIO_API_KEY at {url} (HTTP {response.status_code}); "
                "use a valid personal access token"
            )
        access = response.json().get("access", "")
        payload = _jwt_payload(access) or {}
        self._access = access
        # without an exp claim, assume Label Studio's default lifetime of 5 minutes
        self._expires = float(payload.get("exp", time.time() + 300))


def _host_port(url: str) -> tuple[str, int | None]:
    """(lower-case host, explicit port or None) of a URL; ValueError on a malformed port."""
    parts = urlsplit(url)
    return (parts.hostname or "").lower().rstrip("."), parts.port


def parse_allowed_hosts(entries: Iterable[str]) -> tuple[str, ...]:
    """Normalize allow-list entries: ``host``, ``host:port``, ``*.domain`` or a URL (its host[:port]).

    Commas separate several entries in one string (the environment variable's form).
    """
    out: list[str] = []
    for entry in entries:
        for item in str(entry).split(","):
            item = item.strip().lower()
            if not item:
                continue
            if "://" in item:
                host, port = _host_port(item)
                item = host if port is None else f"{host}:{port}"
            out.append(item.rstrip("/").rstrip("."))
    return tuple(dict.fromkeys(out))


def host_allowed(url: str, allowed: Iterable[str]) -> bool:
    """Whether ``url``'s host matches an allow-list entry (``host`` any port, ``host:port``, ``*.domain``)."""
    try:
        host, port = _host_port(url)
    except ValueError:
        return False
    if not host:
        return False
    for entry in allowed:
        name, sep, entry_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if sep and entry_port != str(port if port is not None else _default_port(url)):
            continue
        if name == host or (name.startswith("*.") and host.endswith(name[1:])):
            return True
    return False


def _default_port(url: str) -> int:
    return 443 if urlsplit(url).scheme.lower() == "https" else 80


def local_file_path(root: Path, relative: str) -> Path:
    """``root / relative``, refusing anything that leaves ``root``.

    Raises AccessDeniedError for absolute paths, ``..`` parts, and symlinks that resolve outside the root.
    """
    if not relative or "\x00" in relative or "\\" in relative:
        raise AccessDeniedError(f"local file path {relative!r} is not a plain relative path")
    pure = PurePosixPath(relative)
    if pure.is_absolute() or ".." in pure.parts:
        raise AccessDeniedError(f"local file path {relative!r} leaves the document root")
    base = root.resolve()
    try:
        path = (base / pure).resolve(strict=True)
    except (OSError, RuntimeError):
        raise ImageError(f"local file {relative!r} does not exist under the document root") from None
    if not path.is_relative_to(base):  # a symlink pointing out of the root
        raise AccessDeniedError(f"local file path {relative!r} leaves the document root")
    if not path.is_file():
        raise ImageError(f"local file {relative!r} is not a file")
    return path


class ImageFetcher:
    """Fetch and decode task images, with a byte-bounded LRU of decoded pixels.

    Args:
        label_studio_url: base URL of Label Studio (``LABEL_STUDIO_URL``), for uploads and presign.
        api_key: ``LABEL_STUDIO_API_KEY`` (personal access token or legacy token).
        local_files_root: ``LOCAL_FILES_DOCUMENT_ROOT`` when Label Studio's files are on this disk.
        max_cache_bytes: budget of decoded pixels kept.
        max_pixels: refuse images above this many pixels, read from the header before decoding.
        allowed_hosts: hosts besides Label Studio that image URLs may point at (see ``host_allowed``).
        transport: an httpx transport (tests).
    """

    def __init__(
        self,
        label_studio_url: str | None = None,
        api_key: str | None = None,
        local_files_root: Path | str | None = None,
        *,
        max_cache_bytes: int = 256 * 2**20,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        allowed_hosts: Iterable[str] = (),
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.label_studio_url = label_studio_url.rstrip("/") if label_studio_url else None
        self.local_files_root = Path(local_files_root) if local_files_root else None
        self.max_cache_bytes = max_cache_bytes
        self.max_pixels = max_pixels
        self.allowed_hosts = parse_allowed_hosts(allowed_hosts)
        # redirects are followed by hand in ``_get`` so that every hop is checked against the allow-list
        self.client = httpx.Client(timeout=timeout, follow_redirects=False, transport=transport)
        self.auth = (
            LabelStudioAuth(self.label_studio_url, api_key, self.client)
            if self.label_studio_url and api_key
            else None
        )
        # key → (image, digest, file version): a URL or Label Studio path is its own key (version None);
        # a local file is keyed by its resolved path, and its entry holds only while the version matches
        self._cache: OrderedDict[str, tuple[np.ndarray, str, tuple[int, ...] | None]] = OrderedDict()
        self._cache_bytes = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        self.client.close()

    # -- public ------------------------------------------------------------------------------------
    def fetch(self, ref: str, task_id: int | str | None = None) -> tuple[np.ndarray, str]:
        """(image (H, W, 3) uint8 RGB, its content digest) for a task data reference."""
        if not isinstance(ref, str) or not ref.strip():
            raise ImageError("the task has no image reference")
        ref = ref.strip()
        path = self._local_path(ref)
        key = ref if path is None else f"file:{path}"
        version = None if path is None else _file_version(path, ref)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[2] == version:
                self._cache.move_to_end(key)
                return hit[0], hit[1]
        if path is None:
            data = self._read(ref, task_id)
        else:
            # the version read with the bytes, not the one above: an edit in between is seen next time
            data, version = _read_file(path, ref)
        image = decode_image(data, max_pixels=self.max_pixels, name=_short(ref))
        digest = image_digest(image)
        self._remember(key, (image, digest, version))
        return image, digest

    def _local_path(self, ref: str) -> Path | None:
        """The file under ``local_files_root`` that a ``/data/local-files/?d=`` reference names (checked to
        stay inside the root), or None for any other reference, or when there is no root (Label Studio
        serves the file then)."""
        parts = urlsplit(ref)
        if parts.scheme or not parts.path.startswith("/data/local-files") or self.local_files_root is None:
            return None
        values = parse_qs(parts.query).get("d")
        if not values:
            raise ImageError(f"local-files reference {_short(ref)!r} has no ?d= path")
        return local_file_path(self.local_files_root, values[0])

    # -- sources -----------------------------------------------------------------------------------
    def _read(self, ref: str, task_id: int | str | None) -> bytes:
        parts = urlsplit(ref)
        scheme = parts.scheme.lower()
        if scheme in CLOUD_SCHEMES:
            return self._presigned(ref, task_id)
        if scheme in ("http", "https"):
            return self._get(ref, auth=self._is_label_studio(ref))
        if scheme:
            raise AccessDeniedError(f"image reference {_short(ref)!r} uses an unsupported scheme {scheme!r}")
        if parts.path.startswith("/data/local-files"):
            if not parse_qs(parts.query).get("d"):
                raise ImageError(f"local-files reference {_short(ref)!r} has no ?d= path")
            return self._get(self._ls_url(ref), auth=True)  # no local root (those are read in ``fetch``)
        if parts.path.startswith("/data/") or parts.path.startswith("/storage-data/"):
            return self._get(self._ls_url(ref), auth=True)
        raise AccessDeniedError(f"image reference {_short(ref)!r} is neither a URL nor a Label Studio path")

    def _ls_url(self, path: str) -> str:
        if not self.label_studio_url:
            raise ImageError(
                f"image {_short(path)!r} is served by Label Studio: set LABEL_STUDIO_URL and "
                "LABEL_STUDIO_API_KEY "
                "(or --label-studio-url / --label-studio-api-key)"
            )
        return self.label_studio_url + path

    def _presigned(self, uri: str, task_id: int | str | None) -> bytes:
        if task_id is None:
            raise ImageError(f"cloud image {_short(uri)!r} needs the task id to ask Label Studio for a link")
        fileuri = base64.urlsafe_b64encode(uri.encode()).decode()
        return self._get(self._ls_url(f"/tasks/{task_id}/presign/?fileuri={fileuri}"), auth=True)

    def _is_label_studio(self, url: str) -> bool:
        return bool(self.label_studio_url) and same_origin(url, self.label_studio_url or "")

    def check_url(self, url: str, *, redirected_from: str | None = None) -> None:
        """Raise AccessDeniedError unless the backend may connect to ``url``: http(s), and Label Studio's
        origin or an allowed host. Called before every connection, redirects included."""
        scheme = urlsplit(url).scheme.lower()
        via = f" (redirected from {_short(redirected_from)})" if redirected_from else ""
        if scheme not in ("http", "https"):
            raise AccessDeniedError(f"image URL {_short(url)!r}{via} uses an unsupported scheme {scheme!r}")
        if self._is_label_studio(url) or host_allowed(url, self.allowed_hosts):
            return
        try:
            host = _host_port(url)[0] or "?"
        except ValueError:
            host = "?"
        raise AccessDeniedError(
            f"image URL {_short(url)!r}{via} is on host {host!r}, which is neither Label Studio "
            f"({self.label_studio_url or 'not configured'}) nor an allowed image host; to fetch from it, "
            f"start the backend with {ALLOW_HOSTS_OPTION} {host} (env {ALLOW_HOSTS_ENV})"
        )

    def _get(self, url: str, *, auth: bool) -> bytes:
        """GET ``url``'s body, following up to MAX_REDIRECTS redirects, each hop checked by ``check_url``.

        ``auth``: the first hop must carry Label Studio's credentials (error when none are configured).
        Credentials go only to Label Studio's origin, whatever the hop.
        """
        if auth and self.auth is None:
            raise ImageError(f"fetching {_short(url)!r} needs LABEL_STUDIO_API_KEY (a personal access token)")
        previous: str | None = None
        trusted_redirect = False  # a redirect answered by Label Studio itself (presign → bucket)
        retried = False
        try:
            for _ in range(MAX_REDIRECTS + 2):
                if not trusted_redirect:
                    self.check_url(url, redirected_from=previous)
                headers = {}
                if self.auth is not None and self._is_label_studio(url):
                    headers["Authorization"] = self.auth.header()
                request = self.client.build_request("GET", url, headers=headers)
                response = self.client.send(request, stream=True)
                try:
                    if response.status_code == 401 and headers and self.auth.is_pat and not retried:
                        # The access token died before its stated expiry (Label Studio restarted, or
                        # the token was rotated): refresh once and ask again, instead of failing every
                        # click until the old token's expiry.
                        self.auth.invalidate()
                        retried = True
                        continue
                    if response.is_redirect and "location" in response.headers:
                        trusted_redirect = self._is_label_studio(url)
                        previous, url = url, str(response.next_request.url) if response.next_request else url
                        continue
                    return self._body(response, url)
                finally:
                    response.close()
        except httpx.HTTPError as exc:
            raise ImageError(f"cannot download {_short(url)} ({type(exc).__name__}: {exc})") from None
        raise ImageError(f"GET {_short(url)} redirected more than {MAX_REDIRECTS} times")

    @staticmethod
    def _body(response: httpx.Response, url: str) -> bytes:
        """The body of a final (non-redirect) answer, bounded by MAX_DOWNLOAD_BYTES."""
        if response.status_code != 200:
            raise ImageError(f"GET {_short(url)} answered HTTP {response.status_code}")
        chunks, total = [], 0
        for chunk in response.iter_bytes():
            total += len(chunk)
            if total > MAX_DOWNLOAD_BYTES:
                raise ImageError(f"{_short(url)} is larger than {MAX_DOWNLOAD_BYTES // 2**20} MiB")
            chunks.append(chunk)
        return b"".join(chunks)

    def _remember(self, key: str, entry: tuple[np.ndarray, str, tuple[int, ...] | None]) -> None:
        size = entry[0].nbytes
        if size > self.max_cache_bytes:
            return
        with self._lock:
            old = self._cache.pop(key, None)
            if old is not None:
                self._cache_bytes -= old[0].nbytes
            self._cache[key] = entry
            self._cache_bytes += size
            while self._cache_bytes > self.max_cache_bytes:
                _, (evicted, _, _) = self._cache.popitem(last=False)
                self._cache_bytes -= evicted.nbytes


def _version(st: os.stat_result) -> tuple[int, ...]:
    """What changes when a file is written or replaced: size, modification time (ns), device and inode."""
    return st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino


def _file_version(path: Path, ref: str) -> tuple[int, ...]:
    try:
        return _version(path.stat())
    except OSError as exc:
        raise ImageError(f"cannot read local file {_short(ref)!r}: {exc.strerror or exc}") from None


def _read_file(path: Path, ref: str) -> tuple[bytes, tuple[int, ...]]:
    """The bytes of ``path`` and its version, taken from the one open file."""
    try:
        with path.open("rb") as f:
            version = _version(os.fstat(f.fileno()))
            return f.read(), version
    except OSError as exc:
        raise ImageError(f"cannot read local file {_short(ref)!r}: {exc.strerror or exc}") from None


def same_origin(a: str, b: str) -> bool:
    """Whether two URLs have the same scheme and host:port (False when either is not a URL).

    >>> same_origin("http://LS:8080/data/upload/1/a.jpg", "http://ls:8080"), same_origin("http://[", "http://x")
    (True, False)
    """
    try:
        pa, pb = urlsplit(a), urlsplit(b)
    except ValueError:
        return False
    return (pa.scheme.lower(), pa.netloc.lower()) == (pb.scheme.lower(), pb.netloc.lower())


def _short(ref: str) -> str:
    """A reference short enough for a log line, without query secrets of presigned URLs."""
    parts = urlsplit(ref)
    if parts.scheme in ("http", "https") and parts.query and "local-files" not in parts.path:
        ref = ref.split("?", 1)[0] + "?..."
    return ref if len(ref) <= 200 else ref[:197] + "..."
