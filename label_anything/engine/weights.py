"""Official checkpoints: where they come from, how to fetch and verify them, how to load them safely.

Digests are SHA-256 of the files as the authors serve them (read from the Hugging Face LFS pointers of
the official or byte-identical mirror repositories; the authors' own pages publish none). A checkpoint gated
on the Hugging Face hub (SAM 3) is fetched with the user's read token (``HF_TOKEN``), sent to the hub's own
host only, never to the CDN it redirects to nor to a mirror.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from label_anything.errors import CheckpointError

if TYPE_CHECKING:
    import httpx


@dataclass(frozen=True)
class Gate:
    """A checkpoint its authors gate on the Hugging Face hub: each user accepts ``licence`` on ``page`` and
    downloads with a read token (``HF_TOKEN``). ``title`` names the model in messages (``SAM 3``)."""

    title: str
    page: str
    licence: str


@dataclass(frozen=True)
class CheckpointSpec:
    """One official checkpoint file.

    Attributes:
        name: what users type after ``label-anything download`` (e.g. ``sam_vit_b``).
        model: model family (``sam``, ``sam_hq``, ``mobile_sam``).
        config: architecture within the family (``vit_b``, ``vit_t`` ...).
        filename: the file name the authors use.
        url: where the authors serve it.
        size: bytes.
        sha256: hex digest.
        gate: set when the file is gated on the Hugging Face hub (a token is needed), else None.
    """

    name: str
    model: str
    config: str
    filename: str
    url: str
    size: int
    sha256: str
    gate: Gate | None = None


_FB = "https://dl.fbaipublicfiles.com/segment_anything/"
_HQ = "https://huggingface.co/lkeab/hq-sam/resolve/main/"
_SAM2 = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"

CHECKPOINTS: dict[str, CheckpointSpec] = {
    spec.name: spec
    for spec in (
        CheckpointSpec("sam_vit_h", "sam", "vit_h", "sam_vit_h_4b8939.pth", _FB + "sam_vit_h_4b8939.pth",
                       2564550879, "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"),
        CheckpointSpec("sam_vit_l", "sam", "vit_l", "sam_vit_l_0b3195.pth", _FB + "sam_vit_l_0b3195.pth",
                       1249524607, "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"),
        CheckpointSpec("sam_vit_b", "sam", "vit_b", "sam_vit_b_01ec64.pth", _FB + "sam_vit_b_01ec64.pth",
                       375042383, "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"),
        CheckpointSpec("sam_hq_vit_h", "sam_hq", "vit_h", "sam_hq_vit_h.pth", _HQ + "sam_hq_vit_h.pth",
                       2570940653, "a7ac14a085326d9fa6199c8c698c4f0e7280afdbb974d2c4660ec60877b45e35"),
        CheckpointSpec("sam_hq_vit_l", "sam_hq", "vit_l", "sam_hq_vit_l.pth", _HQ + "sam_hq_vit_l.pth",
                       1254865805, "e1a6c385d62bf005ded91a54d5ec55c985cfc4103ef89c08d90f39f04934c343"),
        CheckpointSpec("sam_hq_vit_b", "sam_hq", "vit_b", "sam_hq_vit_b.pth", _HQ + "sam_hq_vit_b.pth",
                       379335069, "14a9d662cd6f5a9c2dba6d40ab0058d88d287e4a18fd6fdc6ad5fb1a3fdeaa57"),
        CheckpointSpec("sam_hq_vit_tiny", "sam_hq", "vit_tiny", "sam_hq_vit_tiny.pth", _HQ + "sam_hq_vit_tiny.pth",
                       42526881, "0f32c075ccdd870ae54db2f7630e7a0878ede5a2b06d05d6fe02c65a82fb7196"),
        CheckpointSpec("mobile_sam", "mobile_sam", "vit_t", "mobile_sam.pt",
                       "https://raw.githubusercontent.com/ChaoningZhang/MobileSAM/master/weights/mobile_sam.pt",
                       40728226, "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f"),
        # SAM 2.1 (Meta, 2024-09-28 release); digests from the facebook/sam2.1-hiera-* LFS pointers.
        CheckpointSpec("sam2.1_hiera_tiny", "sam2", "tiny", "sam2.1_hiera_tiny.pt", _SAM2 + "sam2.1_hiera_tiny.pt",
                       156008466, "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69"),
        CheckpointSpec("sam2.1_hiera_small", "sam2", "small", "sam2.1_hiera_small.pt",
                       _SAM2 + "sam2.1_hiera_small.pt",
                       184416285, "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38"),
        CheckpointSpec("sam2.1_hiera_base_plus", "sam2", "base_plus", "sam2.1_hiera_base_plus.pt",
                       _SAM2 + "sam2.1_hiera_base_plus.pt",
                       323606802, "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5"),
        CheckpointSpec("sam2.1_hiera_large", "sam2", "large", "sam2.1_hiera_large.pt",
                       _SAM2 + "sam2.1_hiera_large.pt",
                       898083611, "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318"),
        # SAM 3 (Meta, 2025-11), gated under Meta's SAM License (not Apache-2.0). Size and digest of the
        # facebook/sam3 sam3.pt LFS object (revision 3c879f39826c281e95690f02c7821c4de09afae7, byte-identical
        # on ModelScope's facebook/sam3), as independent public projects pin it; no pointer page could be read
        # here, so download() also checks them against the hub's own X-Linked-Size / X-Linked-Etag.
        CheckpointSpec("sam3", "sam3", "sam3", "sam3.pt", "https://huggingface.co/facebook/sam3/resolve/main/sam3.pt",
                       3450062241, "9999e2341ceef5e136daa386eecb55cb414446a00ac2b55eb2dfd2f7c3cf8c9e",
                       Gate("SAM 3", "https://huggingface.co/facebook/sam3", "Meta's SAM License")),
    )
}


def find_spec(model: str, config: str) -> CheckpointSpec | None:
    """The official checkpoint of a (family, config), or None where there is none."""
    for spec in CHECKPOINTS.values():
        if spec.model == model and spec.config == config:
            return spec
    return None


def default_cache_dir() -> Path:
    """``$LABEL_ANYTHING_CACHE``, else ``$XDG_CACHE_HOME/label-anything``, else ``~/.cache/label-anything``."""
    if env := os.environ.get("LABEL_ANYTHING_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "label-anything"


def checkpoint_dir(cache_dir: Path | None = None) -> Path:
    """Where downloaded checkpoints live."""
    return (cache_dir or default_cache_dir()) / "checkpoints"


_digest_memo: dict[tuple[str, int, int], str] = {}
_digest_lock = threading.Lock()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, remembered per (path, size, mtime) so a server hashes its checkpoint once."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _digest_lock:
        if key in _digest_memo:
            return _digest_memo[key]
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    with _digest_lock:
        _digest_memo[key] = digest
    return digest


def missing_checkpoint_message(spec: CheckpointSpec, cache_dir: Path | None = None) -> str:
    """The one sentence a user needs when a checkpoint is not on disk."""
    target = checkpoint_dir(cache_dir) / spec.filename
    gated = (f"; gated: accept the licence at {spec.gate.page} and set HF_TOKEN to a read token"
             if spec.gate else "")
    return (
        f"checkpoint {spec.filename} for {spec.model} {spec.config} is not in {target.parent}: run "
        f"`label-anything download {spec.name}` (fetches {spec.url}{gated}), or pass an existing file "
        f"with --checkpoint FILE"
    )


class DownloadError(CheckpointError):
    """A download that failed. The message says what happened and what to do; ``reason`` says only what
    happened, in a few words (``label-anything up`` adds its own advice: it goes on without the file)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


ProgressFactory = Callable[[int, str], "ProgressBar"]


class ProgressBar:
    """The little interface download() needs from a progress bar (tqdm fits it)."""

    def update(self, n: int) -> None: ...
    def close(self) -> None: ...


def _tqdm_progress(total: int, desc: str) -> ProgressBar:
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc)  # type: ignore[return-value]


HF_TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")  # the hub's name for it, then its older one
HF_TOKENS_PAGE = "https://huggingface.co/settings/tokens"
_MAX_REDIRECTS = 10


def hub_token() -> tuple[str, str] | None:
    """``(variable, token)`` from ``HF_TOKEN``, else ``HUGGING_FACE_HUB_TOKEN``; None when neither is set."""
    for variable in HF_TOKEN_VARIABLES:
        if token := os.environ.get(variable, "").strip():
            if not (token.isascii() and token.isprintable()) or any(c.isspace() for c in token):
                raise DownloadError(f"{variable} holds characters no Hugging Face token has: set it to a read "
                                    f"token from {HF_TOKENS_PAGE}", f"{variable} is not a token")
            return variable, token
    return None


def download(
    spec: CheckpointSpec,
    cache_dir: Path | None = None,
    *,
    url: str | None = None,
    progress: ProgressFactory | None = _tqdm_progress,
    timeout: float = 30.0,
) -> Path:
    """Fetch a checkpoint into the cache, verify size and SHA-256, and return its path.

    Writes to ``<file>.part`` in the same folder and renames only after verification, so an
    interrupted or corrupt download never leaves a file that looks complete. A file already present
    with the right digest is not fetched again. A gated checkpoint is fetched with ``hub_token()``, sent
    only to the origin of ``spec.url`` (not to the CDN it redirects to, nor to a mirror ``url``).
    """
    import httpx

    target = checkpoint_dir(cache_dir) / spec.filename
    if target.exists():
        if target.stat().st_size == spec.size and file_sha256(target) == spec.sha256:
            return target
        target.unlink()  # wrong or damaged: fetch again
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    source = url or spec.url
    token = hub_token() if spec.gate else None
    h = hashlib.sha256()
    received = 0
    bar = None
    try:
        with httpx.Client(timeout=timeout) as client:
            response = _open(client, spec, source, token)
            try:
                bar = progress(spec.size, spec.filename) if progress else None
                with part.open("wb") as out:
                    for chunk in response.iter_bytes(1 << 20):
                        out.write(chunk)
                        h.update(chunk)
                        received += len(chunk)
                        if bar:
                            bar.update(len(chunk))
            finally:
                response.close()
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"cannot download {spec.filename} from {source} ({type(exc).__name__}: {exc}): the connection "
            "failed or was cut off; try again, or download the file by other means and pass it with "
            "--checkpoint FILE",
            f"the connection to {source} failed or was cut off ({type(exc).__name__}: {exc})",
        ) from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    finally:
        if bar:
            bar.close()
    if received != spec.size or h.hexdigest() != spec.sha256:
        part.unlink(missing_ok=True)
        detail = (f"{received} bytes, sha256 {h.hexdigest()[:12]}…; expected {spec.size} bytes, "
                  f"{spec.sha256[:12]}…")
        raise DownloadError(
            f"downloaded {spec.filename} from {source} is corrupt ({detail}); try again, or "
            f"download it by other means and pass it with --checkpoint FILE",
            f"the file from {source} is corrupt ({detail})",
        )
    os.replace(part, target)
    return target


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


def _open(client: httpx.Client, spec: CheckpointSpec, source: str, token: tuple[str, str] | None) -> httpx.Response:
    """GET ``source``, following redirects by hand so that the token goes to the hub's origin only; the
    streamed 200 response, its body not read yet. Any other answer raises DownloadError."""
    import httpx

    hub = _origin(httpx.URL(spec.url))
    url = httpx.URL(source)
    for _ in range(_MAX_REDIRECTS + 1):
        at_hub = _origin(url) == hub
        headers = {"Authorization": f"Bearer {token[1]}"} if token and at_hub else {}
        response = client.send(client.build_request("GET", url, headers=headers), stream=True)
        if at_hub:
            try:
                _check_hub_headers(spec, response)
            except DownloadError:
                response.close()
                raise
        if not response.has_redirect_location:
            break
        response.close()
        url = url.join(response.headers["Location"])
        if url.scheme not in ("http", "https"):
            raise DownloadError(
                f"{source} redirected the download of {spec.filename} to {url.scheme}: URL, which is not fetched; "
                "download it by other means and pass it with --checkpoint FILE",
                f"{source} redirected to a {url.scheme}: URL",
            )
    else:
        response.close()
        raise DownloadError(
            f"{source} redirected the download of {spec.filename} more than {_MAX_REDIRECTS} times; download "
            "it by other means and pass it with --checkpoint FILE",
            f"{source} redirected more than {_MAX_REDIRECTS} times",
        )
    if response.status_code == 200:
        return response
    try:
        body = _head_of_body(response)
    finally:
        response.close()
    gated = spec.gate is not None and _origin(url) == hub
    raise _refusal(spec, source, response.status_code, body, token, gated)


def _check_hub_headers(spec: CheckpointSpec, response: httpx.Response) -> None:
    """The hub's own word on the file, where it gives one: ``X-Linked-Size`` and ``X-Linked-Etag`` (the LFS
    object's size and SHA-256, quoted) on the resolve URL's redirect; ``ETag`` of such a redirect carries the
    same digest. A hub that serves another file than the registry verifies is refused before the transfer."""
    etag = response.headers.get("X-Linked-Etag") or (response.headers.get("ETag") if response.is_redirect else "")
    digest = (etag or "").removeprefix("W/").strip().strip('"').lower()
    digest = digest if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest) else None
    linked = response.headers.get("X-Linked-Size", "").strip()
    size = int(linked) if linked.isdigit() else None
    if (digest is None or digest == spec.sha256) and (size is None or size == spec.size):
        return
    found = f"{size if size is not None else '?'} bytes, sha256 {(digest or '?')[:12]}…"
    raise DownloadError(
        f"{response.url.host} now serves another {spec.filename} ({found}) than the one this label-anything "
        f"verifies ({spec.size} bytes, sha256 {spec.sha256[:12]}…): upgrade label-anything, or download the "
        "file by other means and pass it with --checkpoint FILE",
        f"{response.url.host} serves another {spec.filename} ({found})",
    )


def _head_of_body(response: httpx.Response, limit: int = 64 << 10) -> str:
    """The first ``limit`` bytes of an error answer, as text (enough for the hub's JSON message)."""
    import httpx

    data = b""
    try:
        for chunk in response.iter_bytes():
            data += chunk
            if len(data) >= limit:
                break
    except httpx.HTTPError:
        pass
    return data[:limit].decode("utf-8", "replace")


def _refusal(spec: CheckpointSpec, source: str, status: int, body: str,
             token: tuple[str, str] | None, gated: bool) -> DownloadError:
    """What a non-200 answer means and what to do; for a gated file, in the hub's terms (401: no or a bad
    token, 403: the licence not accepted yet or a token without access to gated repositories)."""
    reason = f"{source} answered HTTP {status}"
    gate = spec.gate
    if gated and gate and status == 401 and token is None:
        return DownloadError(
            f"{gate.title} weights are gated: accept the licence at {gate.page} and set "
            f"HF_TOKEN=<a read token from {HF_TOKENS_PAGE}>", reason + " (no token)")
    if gated and gate and status == 401 and token:
        return DownloadError(
            f"the Hugging Face hub refused the token in {token[0]} (HTTP 401: mistyped, expired or revoked) for "
            f"{gate.title}: set {token[0]} to a valid read token from {HF_TOKENS_PAGE}", reason + " (token refused)")
    if gated and gate and status == 403:
        text = body.lower()
        if "fine-grained" in text or "token settings" in text:
            return DownloadError(
                f"the token in {token[0] if token else 'HF_TOKEN'} may not read gated repositories (HTTP 403): "
                f"enable read access to public gated repositories for it at {HF_TOKENS_PAGE}, or use a read "
                f"token", reason + " (token without gated access)")
        if "access" in text or "gated" in text or "restricted" in text or "authorized" in text:
            return DownloadError(
                f"your Hugging Face account has no access to {gate.title} yet (HTTP 403): accept {gate.licence} at "
                f"{gate.page} with the account of the token in {token[0] if token else 'HF_TOKEN'}, wait until "
                f"the request is approved, then run `label-anything download {spec.name}` again",
                reason + " (licence not accepted)")
    if gated and gate and status == 404:
        return DownloadError(
            f"downloading {spec.filename} from {source} failed with HTTP 404 (moved or renamed upstream?): look "
            f"for it at {gate.page}, or download it by other means and pass it with --checkpoint FILE", reason)
    return DownloadError(
        f"downloading {spec.filename} from {source} failed with HTTP {status}; download it by other means and "
        f"pass it with --checkpoint FILE", reason)


def load_state_dict(path: Path, *, mmap: bool = False) -> dict:
    """Load a checkpoint's tensors with ``weights_only=True``: a checkpoint is untrusted input.

    Accepts a plain state dict or one wrapped as ``{"model": ...}`` / ``{"state_dict": ...}``.
    mmap: map the file instead of reading it whole (a large checkpoint then never sits in memory twice).
    """
    import pickle

    import torch

    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass an existing file with --checkpoint FILE")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"refusing to load {path}: it is not a plain weights file and loading it could run code "
            f"({first[:200]})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a PyTorch file ({str(exc)[:200]})") from None
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict of named tensors")
    return obj
