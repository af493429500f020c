"""Find the image file of a task and copy it into the dataset: local folders first, Label Studio last.

Where an image is looked for, in order:

1. ``--images-root DIR``: ``DIR/<path after /data/upload/>`` (``3/abc123-x.jpg``), ``DIR/<local-files d>``,
   then ``DIR/<file name>``, then ``DIR/<file name without Label Studio's 8-character upload prefix>``;
2. the upload folder of a local Label Studio: ``$LABEL_STUDIO_BASE_DATA_DIR/media/upload/<project>/<file>``
   (default base ``~/.local/share/label-studio``);
3. local-files references under ``LOCAL_FILES_DOCUMENT_ROOT`` (confined to that root);
4. ``LABEL_STUDIO_URL`` with ``LABEL_STUDIO_API_KEY`` (personal access token or legacy token) for uploads
   and local files, and plain http(s) URLs (the key is sent to Label Studio's origin only).

Paths found on disk never leave their root: ``..``, absolute paths and symlinks out of it are refused.
Redirects follow the backend's policy (``labelstudio.images``): a hop may go to the origin of the URL asked
for, to Label Studio's, or to a host of ``--allow-image-host``; a redirect that Label Studio itself answers
with is trusted (its presign links point at the bucket it was set up with). Any other hop is never
contacted, and the image is counted as not converted.

Images go into the dataset byte for byte, except those with an EXIF orientation: Label Studio, and the
``width``/``height`` of the dataset, show them rotated, so they are written upright (re-encoded at high
quality, the orientation tag removed) for loaders that ignore EXIF.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import httpx
from PIL import Image, ImageOps

from label_anything.errors import ImageError, LabelAnythingError
from label_anything.imaging.fetch import (
    ALLOW_HOSTS_OPTION,
    MAX_DOWNLOAD_BYTES,
    MAX_REDIRECTS,
    LabelStudioAuth,
    host_allowed,
    local_file_path,
    parse_allowed_hosts,
    same_origin,
)
from label_anything.labelstudio.tasks import reference_file_name, reference_relative_path

NOT_FOUND = "image not found (use --images-root or LABEL_STUDIO_URL)"
REDIRECT_REFUSED = f"image URL redirected to a host that is not allowed (use {ALLOW_HOSTS_OPTION} HOST)"
UNREADABLE = "image file that cannot be read as an image (not copied; its regions are kept)"
_ORIENTATION = 0x0112
_UPRIGHT_JPEG_QUALITY = 95
# Label Studio prefixes uploaded files with 8 hex-ish characters and a dash: "3f2a9c1d-cat.jpg".
_UPLOAD_PREFIX = re.compile(r"^[0-9a-zA-Z]{8}-")


def default_upload_dir() -> Path:
    """``<LABEL_STUDIO_BASE_DATA_DIR or ~/.local/share/label-studio>/media/upload``."""
    base = os.environ.get("LABEL_STUDIO_BASE_DATA_DIR") or str(Path.home() / ".local/share/label-studio")
    return Path(base).expanduser() / "media" / "upload"


@dataclass
class ImageSource:
    """Where the bytes of one image are: a file on disk, or bytes downloaded."""

    path: Path | None = None
    data: bytes | None = None
    origin: str = ""


class ImageLocator:
    """Locate task images on disk or fetch them from Label Studio.

    Args:
        images_root: ``--images-root``.
        upload_dir: Label Studio's ``media/upload`` folder (None: the default one, if it exists).
        local_files_root: ``LOCAL_FILES_DOCUMENT_ROOT`` (None: from the environment).
        label_studio_url: ``LABEL_STUDIO_URL`` (None: from the environment; "" disables fetching from it).
        api_key: ``LABEL_STUDIO_API_KEY`` (None: from the environment).
        download: fetch over http(s) at all.
        allowed_hosts: hosts that redirects may lead to (``--allow-image-host``; see ``host_allowed``).
        transport: an httpx transport (tests).
    """

    def __init__(
        self,
        images_root: Path | None = None,
        *,
        upload_dir: Path | None = None,
        local_files_root: Path | None = None,
        label_studio_url: str | None = None,
        api_key: str | None = None,
        download: bool = True,
        allowed_hosts: Iterable[str] = (),
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.images_root = images_root
        if images_root is not None and not images_root.is_dir():
            raise LabelAnythingError(f"--images-root {images_root} is not a folder")
        self.upload_dir = upload_dir if upload_dir is not None else default_upload_dir()
        env_root = os.environ.get("LOCAL_FILES_DOCUMENT_ROOT") or os.environ.get(
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"
        )
        self.local_files_root = local_files_root or (Path(env_root) if env_root else None)
        url = os.environ.get("LABEL_STUDIO_URL", "") if label_studio_url is None else label_studio_url
        self.label_studio_url = url.rstrip("/")
        self.api_key = os.environ.get("LABEL_STUDIO_API_KEY", "") if api_key is None else api_key
        self.download = download
        self.allowed_hosts = parse_allowed_hosts(allowed_hosts)
        self._transport = transport
        self._client: httpx.Client | None = None
        self._auth: LabelStudioAuth | None = None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    # -- candidates on disk -----------------------------------------------------------------------------
    def _disk_candidates(self, ref: str) -> list[tuple[Path, str]]:
        rel = reference_relative_path(ref)
        name = Path(rel).name
        out: list[tuple[Path, str]] = []
        if self.images_root is not None:
            out += [(self.images_root, rel), (self.images_root, name)]
            plain = _UPLOAD_PREFIX.sub("", name)
            if plain != name:
                out.append((self.images_root, plain))
        is_upload = "/data/upload/" in ref or ref.startswith("data/upload/")
        if is_upload and self.upload_dir.is_dir():
            out.append((self.upload_dir, rel))
        if "/data/local-files" in ref and self.local_files_root is not None:
            out.append((self.local_files_root, rel))
        if not ref.startswith(("http://", "https://", "/")) and "://" not in ref and self.images_root is None:
            out.append((Path.cwd(), rel))  # a bare relative path in the task data
        return out

    def locate(self, ref: str) -> ImageSource | None:
        """Where the image of ``ref`` is, or None when it is nowhere to be found (see ``find``)."""
        found = self.find(ref)
        return found if isinstance(found, ImageSource) else None

    def find(self, ref: str) -> ImageSource | str:
        """Where the image of ``ref`` is, or why it was not found (a reason for the summary).

        Raises:
            LabelAnythingError: Label Studio refused the API key (every later image would fail the same way).
        """
        for root, rel in self._disk_candidates(ref):
            try:
                return ImageSource(path=local_file_path(root, rel), origin=str(root))
            except ImageError:  # missing, or leaving its root: try the next place
                continue
        url = self._url_for(ref)
        if url is None:
            return NOT_FOUND
        data = self._fetch(url)
        return data if isinstance(data, str) else ImageSource(data=data, origin=url)

    def _url_for(self, ref: str) -> str | None:
        if not self.download:
            return None
        if ref.startswith(("http://", "https://")):
            return ref
        if ref.startswith("/") and self.label_studio_url:
            return urljoin(self.label_studio_url + "/", ref.lstrip("/"))
        return None

    def _fetch(self, url: str) -> bytes | str:
        """The body at ``url``, or why there is none; every redirect hop is checked before it is contacted."""
        if self._client is None:
            self._client = httpx.Client(transport=self._transport, timeout=30.0, follow_redirects=False)
            if self.label_studio_url and self.api_key:
                self._auth = LabelStudioAuth(self.label_studio_url, self.api_key, self._client)
        first = previous = url
        try:
            for hop in range(MAX_REDIRECTS + 1):
                if hop and not self._hop_allowed(url, first, previous):
                    return REDIRECT_REFUSED
                headers = self._headers(url)
                with self._client.stream("GET", url, headers=headers) as response:
                    if response.is_redirect and response.next_request is not None:
                        previous, url = url, str(response.next_request.url)
                        continue
                    return self._body(response, url, authorized=bool(headers))
        except (httpx.HTTPError, httpx.InvalidURL, ValueError):
            return NOT_FOUND
        return f"image URL redirected more than {MAX_REDIRECTS} times"

    def _hop_allowed(self, url: str, first: str, answered_by: str) -> bool:
        ls = self.label_studio_url
        by_label_studio = bool(ls) and (same_origin(url, ls) or same_origin(answered_by, ls))
        return same_origin(url, first) or by_label_studio or host_allowed(url, self.allowed_hosts)

    def _headers(self, url: str) -> dict[str, str]:
        if self._auth is None or not same_origin(url, self.label_studio_url):
            return {}  # the key goes to Label Studio's origin only, whatever the hop
        try:
            return {"Authorization": self._auth.header()}
        except ImageError as exc:
            raise LabelAnythingError(str(exc)) from None

    @staticmethod
    def _body(response: httpx.Response, url: str, *, authorized: bool) -> bytes | str:
        if response.status_code in (401, 403) and authorized:
            raise LabelAnythingError(
                f"Label Studio refused LABEL_STUDIO_API_KEY for {url} (HTTP {response.status_code}); "
                "set a valid personal access token or legacy token"
            )
        if response.status_code != 200:
            return NOT_FOUND
        buf = io.BytesIO()
        for chunk in response.iter_bytes():
            buf.write(chunk)
            if buf.tell() > MAX_DOWNLOAD_BYTES:
                return f"image download larger than {MAX_DOWNLOAD_BYTES // 2**20} MiB"
        return buf.getvalue()


def _open(source: ImageSource) -> Image.Image:
    return Image.open(source.path if source.path is not None else io.BytesIO(source.data or b""))


def _orientation(img: Image.Image) -> int:
    value = img.getexif().get(_ORIENTATION, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def image_size(source: ImageSource) -> tuple[int, int] | None:
    """(W, H) as the browser shows it (after EXIF rotation), read from the header only; None if unreadable."""
    try:
        with _open(source) as img:
            w, h = img.size
            orientation = _orientation(img)
    except Exception:  # Pillow raises many kinds of error on a corrupt header: all mean "unreadable"
        return None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _upright(source: ImageSource) -> bytes | None:
    """The image turned as its EXIF orientation says, re-encoded without that tag; None when it needs no turn.

    Other EXIF tags and the ICC profile are kept; JPEG is re-encoded at quality 95 without chroma subsampling.

    Raises:
        ImageError: it has an orientation but Pillow cannot turn or re-encode it.
    """
    try:
        with _open(source) as img:
            if _orientation(img) == 1:
                return None
            fmt = "JPEG" if img.format in ("JPEG", "MPO") else img.format or "PNG"
            turned = ImageOps.exif_transpose(img)
            options: dict = {"exif": turned.getexif().tobytes()}
            if img.info.get("icc_profile"):
                options["icc_profile"] = img.info["icc_profile"]
            if fmt == "JPEG":
                options.update(quality=_UPRIGHT_JPEG_QUALITY, subsampling=0)
            out = io.BytesIO()
            turned.save(out, format=fmt, **options)
            return out.getvalue()
    except Exception as exc:  # as in image_size: any error of Pillow's means it cannot be done
        raise ImageError(f"cannot write it upright ({type(exc).__name__}: {exc})") from None


def copy_image(source: ImageSource, dest: Path) -> bool:
    """Write the image to ``dest`` atomically (a temporary file renamed); True when it was turned upright.

    A byte-for-byte copy unless the image has an EXIF orientation (see ``_upright``); an identical copy
    already there is kept.

    Raises:
        ImageError: the image has an EXIF orientation and cannot be turned upright (nothing is written).
        LabelAnythingError: the dataset folder cannot be written.
    """
    upright = _upright(source)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if upright is None and source.path is not None and dest.is_file() and \
                dest.stat().st_size == source.path.stat().st_size:
            return False
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".copy.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                if upright is not None:
                    out.write(upright)
                elif source.path is not None:
                    with source.path.open("rb") as src:
                        shutil.copyfileobj(src, out)
                else:
                    out.write(source.data or b"")
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise LabelAnythingError(f"cannot write {dest}: {exc.strerror or exc}") from None
    return upright is not None


def safe_file_name(name: str) -> str:
    """A name that is one plain file in a folder: no separator, NUL or control character, not ``.``/``..``,
    at most 200 bytes (with its suffix)."""
    name = "".join("_" if ch in "/\\\x00" or ord(ch) < 32 else ch for ch in name).strip()
    if name in ("", ".", ".."):
        return "image"
    if len(name.encode("utf-8")) > 200:
        suffix = Path(name).suffix if len(Path(name).suffix.encode("utf-8")) <= 16 else ""
        stem = name[: len(name) - len(suffix)] if suffix else name
        while len((stem + suffix).encode("utf-8")) > 200:
            stem = stem[:-1]
        name = stem + suffix
    return name


def unique_file_name(ref: str, task_id: int, taken: dict[str, str]) -> str:
    """The image's file name in the dataset: the URL-decoded original, made unique with the task id.

    ``taken`` maps names already used to the reference that took them (updated here).
    """
    original = name = safe_file_name(reference_file_name(ref))
    # Keyed by stem without case: YOLO finds labels by stem (a.jpg and a.png would share a.txt), and
    # case-insensitive file systems would merge A.jpg and a.jpg.
    key = Path(name).stem.casefold()
    attempt = 0
    while taken.get(key, ref) != ref:
        attempt += 1
        name = safe_file_name(f"{task_id}_{original}" if attempt == 1 else f"{task_id}_{attempt}_{original}")
        key = Path(name).stem.casefold()
    taken[key] = ref
    return name
