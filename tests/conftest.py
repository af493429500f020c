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
