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
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
from PIL import Image

from label_anything.errors import ImageError, LabelAnythingError
from label_anything.export.labelstudio_export import reference_file_name, reference_relative_path
from label_anything.labelstudio.images import LabelStudioAuth, local_file_path

MAX_DOWNLOAD_BYTES = 256 * 2**20
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
        """Where the image of ``ref`` is, or None when it is nowhere to be found.

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
            return None
        data = self._fetch(url)
        return None if data is None else ImageSource(data=data, origin=url)

    def _url_for(self, ref: str) -> str | None:
        if not self.download:
            return None
        if ref.startswith(("http://", "https://")):
            return ref
        if ref.startswith("/") and self.label_studio_url:
            return urljoin(self.label_studio_url + "/", ref.lstrip("/"))
        return None

    def _fetch(self, url: str) -> bytes | None:
        if self._client is None:
            self._client = httpx.Client(transport=self._transport, timeout=30.0, follow_redirects=True)
            if self.label_studio_url and self.api_key:
                self._auth = LabelStudioAuth(self.label_studio_url, self.api_key, self._client)
        headers = {}
        if self._auth is not None and _same_origin(url, self.label_studio_url):
            try:
                headers["Authorization"] = self._auth.header()
            except ImageError as exc:
                raise LabelAnythingError(str(exc)) from None
        try:
            with self._client.stream("GET", url, headers=headers) as response:
                if response.status_code in (401, 403) and headers:
                    raise LabelAnythingError(
                        f"Label Studio refused LABEL_STUDIO_API_KEY for {url} (HTTP {response.status_code}); "
                        "set a valid personal access token or legacy token"
                    )
                if response.status_code != 200:
                    return None
                buf = io.BytesIO()
                for chunk in response.iter_bytes():
                    buf.write(chunk)
                    if buf.tell() > MAX_DOWNLOAD_BYTES:
                        return None
                return buf.getvalue()
        except httpx.HTTPError:
            return None


def _same_origin(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme, pa.netloc) == (pb.scheme, pb.netloc)


def image_size(source: ImageSource) -> tuple[int, int] | None:
    """(W, H) as the browser shows it (after EXIF rotation), read from the header only; None if unreadable."""
    try:
        with Image.open(source.path if source.path is not None else io.BytesIO(source.data or b"")) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def copy_image(source: ImageSource, dest: Path) -> None:
    """Write the image to ``dest`` atomically (a temporary file renamed), skipping an identical copy."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if source.path is not None and dest.exists() and dest.stat().st_size == source.path.stat().st_size:
        return
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            if source.path is not None:
                with source.path.open("rb") as src:
                    shutil.copyfileobj(src, out)
            else:
                out.write(source.data or b"")
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def unique_file_name(ref: str, task_id: int, taken: dict[str, str]) -> str:
    """The image's file name in the dataset: the URL-decoded original, made unique with the task id.

    ``taken`` maps names already used to the reference that took them (updated here).
    """
    name = reference_file_name(ref)
    # Keyed by stem without case: YOLO finds labels by stem (a.jpg and a.png would share a.txt), and
    # case-insensitive file systems would merge A.jpg and a.jpg.
    key = Path(name).stem.casefold()
    if taken.get(key, ref) != ref:
        name = f"{task_id}_{name}"
        key = Path(name).stem.casefold()
    taken[key] = ref
    return name
