"""Shared fixtures: random-weight checkpoints of the real architectures, test images, loaded models.

Random weights exercise every code path real weights do (same shapes, same loading code) without a
download; the masks they give are meaningless but deterministic, which is all a test needs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest


def build_random_checkpoint(family: str, config: str, path: Path, seed: int = 0) -> Path:
    """Save a seeded random-weight state dict of the real architecture (official package builder)."""
    import torch

    from label_anything.engine.sam import ARCHITECTURES

    torch.manual_seed(seed)
    net = ARCHITECTURES[(family, config)].build()
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def checkpoint_builder() -> Callable[..., Path]:
    """``build_random_checkpoint`` for tests that write (and delete) their own large checkpoint files."""
    return build_random_checkpoint


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory: ``random_checkpoint("mobile_sam", "vit_t", seed=0)`` → path of a random-weight state dict.

    Built once per (family, config, seed) per session; the same seed gives the same file, hence the
    same weights digest and model id.
    """
    built: dict[tuple[str, str, int], Path] = {}
    folder = tmp_path_factory.mktemp("checkpoints")

    def make(family: str, config: str, seed: int = 0) -> Path:
        key = (family, config, seed)
        if key not in built:
            built[key] = build_random_checkpoint(family, config, folder / f"random-{family}-{config}-{seed}.pth", seed)
        return built[key]

    return make


@pytest.fixture(scope="session")
def chelsea() -> np.ndarray:
    """scikit-image's cat photo: (300, 451, 3) uint8 RGB."""
    skimage_data = pytest.importorskip("skimage.data")
    return np.ascontiguousarray(skimage_data.chelsea())


CHELSEA_FILE_NAME = "chelsea café 1.jpg"
"""A file name with a space and a non-ASCII character: both must survive every URL on the way."""


@pytest.fixture(scope="session")
def chelsea_jpeg(chelsea: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``chelsea`` saved as a JPEG named ``CHELSEA_FILE_NAME`` in a folder of its own."""
    from PIL import Image

    path = tmp_path_factory.mktemp("images") / CHELSEA_FILE_NAME
    Image.fromarray(chelsea).save(path, quality=95)
    return path


@pytest.fixture(scope="session")
def mobile_sam_model(random_checkpoint):
    """MobileSAM (vit_t) with random weights on CPU, loaded through the normal ``load_model`` path."""
    from label_anything.engine import load_model

    return load_model("mobile_sam", "vit_t", random_checkpoint("mobile_sam", "vit_t"), device="cpu")


ORIGINAL_LABEL_CONFIG = """
<View>
  <Image name="image" value="$image" zoom="true"/>
  <KeyPointLabels name="KeyPointLabels" toName="image">
    <Label value="cat" smart="true" background="#e51515" showInline="true"/>
    <Label value="person" smart="true" background="#412cdd" showInline="true"/>
  </KeyPointLabels>
  <RectangleLabels name="RectangleLabels" toName="image">
    <Label value="cat" background="#FF0000"/>
    <Label value="person" background="#0d14d3"/>
  </RectangleLabels>
  <PolygonLabels name="PolygonLabels" toName="image">
    <Label value="cat" background="#FF0000"/>
    <Label value="person" background="#0d14d3"/>
  </PolygonLabels>
  <BrushLabels name="BrushLabels" toName="image">
    <Label value="cat" background="#FF0000"/>
    <Label value="person" background="#0d14d3"/>
  </BrushLabels>
</View>
"""


@pytest.fixture(scope="session")
def original_label_config() -> str:
    """The original label_anything tool's label config: smart keypoints, rectangles, polygons, brush."""
    return ORIGINAL_LABEL_CONFIG


# -- appended for the security / load / fuzz tests ---------------------------------------------------
class StubHttpServer:
    """A real HTTP server on a loopback port that answers from ``routes`` and records every request.

    Attributes:
        url: ``http://127.0.0.1:PORT``.
        routes: path (without query) → (status, headers, body); unknown paths answer 404.
        hits: (method, path with query, headers) of every request received, in order.
    """

    def __init__(self) -> None:
        import http.server
        import threading

        stub = self
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.hits: list[tuple[str, str, dict[str, str]]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                self._answer()

            def _answer(self) -> None:
                stub.hits.append((self.command, self.path, dict(self.headers)))
                status, headers, body = stub.routes.get(self.path.split("?", 1)[0], (404, {}, b"not found"))
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # keep the test output quiet
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture()
def http_stub():
    """Factory: ``http_stub()`` → a running ``StubHttpServer`` (each on its own free port), closed after."""
    servers: list[StubHttpServer] = []

    def make() -> StubHttpServer:
        servers.append(StubHttpServer())
        return servers[-1]

    yield make
    for server in servers:
        server.close()


@pytest.fixture()
def backend_client(mobile_sam_model):
    """Factory: ``backend_client(fetcher, serve_options, raise_server_exceptions=True)`` → a TestClient on a
    fresh ``Backend`` serving random MobileSAM, with a float32 embedding cache (masks equal the engine's bit
    for bit); every client is closed at teardown."""
    from starlette.testclient import TestClient

    from label_anything.app.interactive import Backend
    from label_anything.engine.cache import EmbeddingCache
    from label_anything.server.http import create_app

    clients: list[TestClient] = []

    def make(fetcher, options, *, raise_server_exceptions: bool = True) -> TestClient:
        backend = Backend(mobile_sam_model, fetcher, EmbeddingCache(dtype=np.float32), options)
        client = TestClient(create_app(backend), raise_server_exceptions=raise_server_exceptions)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


# -- SAM 3 ---------------------------------------------------------------------------------------------
# Building a random SAM 3 checkpoint takes ~25 s and 3.4 GB, loading it ~7 s, one encode ~30-50 s on 2 CPU
# cores: the checkpoint is kept under build/ between runs (keyed by the sam3 version and the seed), and
# one session encodes chelsea once for every SAM 3 test. Tests that start a server or a CLI process pass
# ``sam3_cache_dir`` as --cache-dir, where that embedding already is, so they do not encode again.
SAM3_CHECKPOINT_DIR = Path(__file__).resolve().parents[1] / "build" / "test-checkpoints"


@pytest.fixture(scope="session")
def sam3_checkpoint() -> Path:
    """Path of a seeded random-weight SAM 3 checkpoint in the official ``sam3.pt`` layout."""
    import fcntl

    from label_anything.engine.sam3 import sam3_package
    from label_anything.errors import LabelAnythingError
    from label_anything.testing.sam3_checkpoint import build_random_sam3_checkpoint

    try:
        sam3 = sam3_package()  # imported as the product imports it (its import-time warnings silenced)
    except LabelAnythingError as exc:
        pytest.skip(str(exc))

    version = getattr(sam3, "__version__", "0")
    path = SAM3_CHECKPOINT_DIR / f"random-sam3-{version}-seed0.pt"
    SAM3_CHECKPOINT_DIR.mkdir(parents=True, exist_ok=True)
    with open(SAM3_CHECKPOINT_DIR / ".sam3.lock", "w") as lock:  # two test processes build it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.is_file():
            build_random_sam3_checkpoint(path, seed=0)
    return path


@pytest.fixture(scope="session")
def sam3_model(sam3_checkpoint):
    """SAM 3 with random weights on CPU, loaded through the normal ``load_model`` path."""
    from label_anything.engine import load_model

    return load_model("sam3", checkpoint=sam3_checkpoint, device="cpu")


@pytest.fixture(scope="session")
def sam3_chelsea_embedding(sam3_model, chelsea):
    """``chelsea`` encoded once by ``sam3_model`` (float32, as encode returns it)."""
    from label_anything.engine import encode
    from label_anything.imaging.decode import image_digest

    return encode(sam3_model, chelsea, image_digest(chelsea))


@pytest.fixture(scope="session")
def sam3_cache_dir(tmp_path_factory, sam3_model, sam3_chelsea_embedding) -> Path:
    """A --cache-dir whose embedding cache already holds chelsea's SAM 3 embedding (as serve stores it)."""
    from label_anything.engine.cache import EmbeddingCache, cache_key

    folder = tmp_path_factory.mktemp("sam3-cache")
    cache = EmbeddingCache(disk_dir=folder / "embeddings", max_disk_bytes=2**31)
    key = cache_key(sam3_model.info.model_id, sam3_chelsea_embedding.image_digest)
    cache.put(key, sam3_chelsea_embedding)
    assert (folder / "embeddings").is_dir()
    return folder
