"""Label Studio ``/predict`` bodies for a click or an opened task, and a real HTTP server for them."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LABEL_CONFIG = """
<View>
  <Image name="image" value="$image"/>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="object"/></KeyPointLabels>
  <BrushLabels name="brush" toName="image"><Label value="object"/></BrushLabels>
  <RectangleLabels name="box" toName="image"><Label value="object"/></RectangleLabels>
  <PolygonLabels name="poly" toName="image"><Label value="object"/></PolygonLabels>
</View>
"""


def click_body(file_name: str, width: int, height: int, x: float, y: float, task_id: int = 1) -> dict:
    """A Label Studio /predict body for one positive smart keypoint at pixel (x, y)."""
    region = {
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "id": "k1",
        "value": {"x": x * 100 / width, "y": y * 100 / height, "width": 0.5, "keypointlabels": ["object"]},
        "is_positive": True,
        "from_name": "kp",
        "to_name": "image",
        "type": "keypointlabels",
        "origin": "manual",
    }
    return {
        "tasks": [task(file_name, task_id)],
        "project": "1.1700000000",
        "label_config": LABEL_CONFIG,
        "params": {"context": {"result": [region]}},
    }


def task(file_name: str, task_id: int = 1) -> dict:
    from urllib.parse import quote

    return {"id": task_id, "data": {"image": "/data/local-files/?d=" + quote(file_name)}}


def open_body(file_name: str, task_id: int) -> dict:
    """What Label Studio sends when a task is opened: /predict without context."""
    return {"tasks": [task(file_name, task_id)], "project": "1.1700000000", "label_config": LABEL_CONFIG}


@dataclass
class HttpServer:
    """A real uvicorn server on a free local port, in a thread (the client talks real HTTP)."""

    url: str
    server: Any
    thread: threading.Thread
    backend: Any


@contextlib.contextmanager
def serve_backend(model, root: Path, *, cache_bytes: int = 512 * 2**20, prefetch: bool = True) -> Iterator[HttpServer]:
    """Serve ``model`` with mask + box + polygon outputs over HTTP; yields the server."""
    import uvicorn

    from label_anything.app.interactive import Backend, ServeOptions
    from label_anything.engine.cache import EmbeddingCache
    from label_anything.imaging.fetch import ImageFetcher
    from label_anything.labelstudio.results import OutputOptions
    from label_anything.server.http import create_app

    outputs = OutputOptions(mask=True, bbox=True, poly=True)
    backend = Backend(
        model, ImageFetcher(local_files_root=root), EmbeddingCache(max_memory_bytes=cache_bytes),
        ServeOptions(outputs=outputs, refine=False, prefetch=prefetch),
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(backend), host="127.0.0.1", port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield HttpServer(f"http://127.0.0.1:{port}", server, thread, backend)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def post(client, url: str, body: dict | bytes) -> dict:
    """POST a /predict body (a dict, or JSON already encoded: what the client spends encoding is not ours)."""
    if isinstance(body, bytes):
        response = client.post(url + "/predict", content=body, headers={"content-type": "application/json"})
    else:
        response = client.post(url + "/predict", json=body)
    response.raise_for_status()
    return response.json()
