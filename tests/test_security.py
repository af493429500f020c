"""Security of the ML backend (issue 7): which URLs it fetches, how it answers bad input, basic auth,
and that credentials stay out of its logs. MobileSAM random weights; every image here is tiny."""

from __future__ import annotations

import io
import json
import logging
import math
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from label_anything.app.interactive import ServeOptions
from label_anything.imaging.fetch import AccessDeniedError, ImageFetcher
from label_anything.labelstudio.results import OutputOptions

W, H = 64, 48


def kp(x: float, y: float, label: str = "cat", w: int = W, h: int = H, **extra) -> dict:
    """A smart keypoint at pixel (x, y), as Label Studio sends it (percent)."""
    region = {
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": {"x": x * 100 / w, "y": y * 100 / h, "width": 0.5, "keypointlabels": [label]},
        "is_positive": True,
        "from_name": "KeyPointLabels",
        "to_name": "image",
        "type": "keypointlabels",
    }
    region.update(extra)
    return region


def box(x: float, y: float, width: float, height: float) -> dict:
    """A smart rectangle in percent."""
    value = {"x": x, "y": y, "width": width, "height": height, "rotation": 0, "rectanglelabels": ["cat"]}
    return {**kp(0, 0), "type": "rectanglelabels", "from_name": "RectangleLabels", "value": value}


def png_bytes(width: int = W, height: int = H) -> bytes:
    rng = np.random.default_rng(width * height)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` but holds (almost) no pixel data: a bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((H, W, 3), 128, np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture()
def images_root(tmp_path: Path) -> Path:
    """A local-files root holding ``ok.png`` (W x H)."""
    (tmp_path / "ok.png").write_bytes(png_bytes())
    return tmp_path


@pytest.fixture()
def make_backend(backend_client, images_root) -> Callable[..., TestClient]:
    """Factory: a TestClient on a fresh backend; keyword arguments go to ImageFetcher / ServeOptions."""

    def make(*, basic_auth=None, **fetcher_options) -> TestClient:
        fetcher_options.setdefault("local_files_root", images_root)
        options = ServeOptions(outputs=OutputOptions(mask=True, bbox=True), basic_auth=basic_auth)
        return backend_client(ImageFetcher(**fetcher_options), options, raise_server_exceptions=False)

    return make


def body(image: str, regions: list, config: str | None = None) -> dict:
    return {
        "tasks": [{"id": 1, "data": {"image": image}}],
        "project": "1.1700000000",
        "label_config": config,
        "params": {"context": {"result": regions}},
    }


# -- 1. only Label Studio and allowed hosts are fetched ------------------------------------------------
def test_url_to_another_host_is_refused_and_never_contacted(make_backend, http_stub, original_label_config):
    other = http_stub()
    other.routes["/x.png"] = (200, {"Content-Type": "image/png"}, png_bytes())
    client = make_backend()
    response = client.post("/predict", json=body(other.url + "/x.png", [kp(10, 10)], original_label_config))
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert "--allow-image-host 127.0.0.1" in error and "LABEL_ANYTHING_ALLOW_IMAGE_HOSTS" in error
    assert other.hits == []  # refused before any connection
    assert client.get("/health").status_code == 200


def test_allowed_host_works_and_redirect_to_a_disallowed_host_is_refused(
    make_backend, http_stub, original_label_config
):
    allowed, forbidden = http_stub(), http_stub()
    forbidden.routes["/secret.png"] = (200, {}, png_bytes())
    allowed.routes["/x.png"] = (200, {"Content-Type": "image/png"}, png_bytes())
    allowed.routes["/hop.png"] = (302, {"Location": "/x.png"}, b"")
    allowed.routes["/away.png"] = (302, {"Location": forbidden.url + "/secret.png"}, b"")
    client = make_backend(allowed_hosts=[f"127.0.0.1:{allowed.port}"])
    for path in ("/x.png", "/hop.png"):  # a redirect that stays on the allowed host is followed
        response = client.post("/predict", json=body(allowed.url + path, [kp(10, 10)], original_label_config))
        assert response.status_code == 200, response.text
        assert response.json()["results"][0]["result"]
    response = client.post("/predict", json=body(allowed.url + "/away.png", [kp(10, 10)], original_label_config))
    assert response.status_code == 403, response.text
    assert "redirected from" in response.json()["error"]
    assert forbidden.hits == []


def test_label_studio_redirects_are_trusted_and_get_no_key(http_stub):
    """Label Studio's presign endpoint redirects to its storage bucket: followed, without the API key."""
    ls, bucket = http_stub(), http_stub()
    ls.routes["/tasks/3/presign/"] = (302, {"Location": bucket.url + "/obj.png?sig=1"}, b"")
    bucket.routes["/obj.png"] = (200, {}, png_bytes())
    fetcher = ImageFetcher(ls.url, "legacy-key-123")
    image, _ = fetcher.fetch("s3://bucket/obj.png", task_id=3)
    assert image.shape == (H, W, 3)
    assert ls.hits[0][2]["Authorization"] == "Token legacy-key-123"
    assert "Authorization" not in bucket.hits[0][2]
    with pytest.raises(AccessDeniedError):
        fetcher.fetch(bucket.url + "/obj.png")  # the bucket itself is not an allowed host
    fetcher.close()


def test_allow_list_option_and_environment(monkeypatch):
    from label_anything.cli.options import allowed_image_hosts
    from label_anything.cli.parser import build_parser

    args = build_parser().parse_args(["serve", "--allow-image-host", "A.com", "--allow-image-host", "b.org:8080"])
    assert allowed_image_hosts(args) == ("a.com", "b.org:8080")
    monkeypatch.setenv("LABEL_ANYTHING_ALLOW_IMAGE_HOSTS", "x.net, *.cdn.io,https://y.org:444/")
    assert allowed_image_hosts(build_parser().parse_args(["serve"])) == ("x.net", "*.cdn.io", "y.org:444")
    assert build_parser().parse_args(["serve", "--max-image-pixels", "1000"]).max_image_pixels == 1000


# -- 2. bad input: a clear 4xx JSON, a log line, and the server stays up -------------------------------
NO_IMAGE_CONFIG = '<View><BrushLabels name="b" toName="image"><Label value="cat"/></BrushLabels></View>'
NAN = math.nan

# (case id, how to build the request, expected status, words in the error)
BAD_INPUTS = [
    ("malformed JSON", {"content": b'{"tasks": [}'}, 400, "not JSON"),
    ("body not an object", {"json": [1, 2]}, 400, "must be a JSON object"),
    ("tasks missing", {"json": {"params": {}}}, 400, "'tasks' must be"),
    ("tasks empty", {"json": {"tasks": []}}, 400, "'tasks' must be"),
    ("tasks not a list", {"json": {"tasks": {"id": 1}}}, 400, "'tasks' must be"),
    ("task without image key", {"body": ({"id": 1, "data": {"img": "x"}}, [kp(10, 10)])}, 400, "has no data['image']"),
    ("unknown region type", {"regions": [{**kp(10, 10), "type": "choices"}]}, 400, "'choices' cannot be a prompt"),
    ("region without value", {"regions": [{k: v for k, v in kp(10, 10).items() if k != "value"}]}, 400, "no 'value'"),
    ("x above 100", {"regions": [kp(10, 10) | {"value": {"x": 150, "y": 5, "keypointlabels": ["cat"]}}]}, 400,
     "0 to 100"),
    ("y below 0", {"regions": [kp(10, 10) | {"value": {"x": 5, "y": -3, "keypointlabels": ["cat"]}}]}, 400, "0 to 100"),
    ("NaN coordinate", {"regions": [kp(10, 10) | {"value": {"x": NAN, "y": 5, "keypointlabels": ["cat"]}}]}, 400,
     "finite number"),
    ("zero-area box", {"regions": [box(10, 10, 0, 20)]}, 400, "box"),
    ("10,000 points", {"regions": [kp(i % W, i % H) for i in range(10_000)]}, 400, "at most"),
    ("label not in outputs", {"regions": [kp(10, 10, label="dog")]}, 400, "label 'dog' is not in"),
    ("config not XML", {"config": "this is not <xml"}, 400, "not valid XML"),
    ("config without Image", {"config": NO_IMAGE_CONFIG}, 400, "no <Image name='image'>"),
    ("unknown scheme", {"image": "gopher://example.com/x.png"}, 403, "unsupported scheme 'gopher'"),
    ("file scheme", {"image": "file:///etc/passwd"}, 403, "unsupported scheme 'file'"),
    ("URL returns HTML", {"served": b"<html><body>login</body></html>"}, 422, "is not an image file"),
    ("URL returns empty body", {"served": b""}, 422, "is empty"),
    ("truncated JPEG", {"served": jpeg_bytes()[:300]}, 422, "not a readable image"),
    ("0x0 image", {"served": png_header_only(0, 0)}, 422, "image"),
    ("decompression bomb", {"served": png_header_only(50_000, 50_000)}, 422, "--max-image-pixels"),
    ("above --max-image-pixels", {"served": png_bytes(100, 100), "max_pixels": 5000}, 422, "above the limit of 5,000"),
    ("size differs from original_width", {"regions": [kp(10, 10, w=W + 1)]}, 422, "shows it as 65x48"),
]


@pytest.mark.parametrize(("case", "spec", "status", "words"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_a_clear_4xx(make_backend, http_stub, original_label_config, caplog, case, spec, status, words):
    caplog.set_level(logging.INFO)
    stub = http_stub()
    client = make_backend(allowed_hosts=[f"127.0.0.1:{stub.port}"], max_pixels=spec.get("max_pixels", 10**8))
    image = spec.get("image", "/data/local-files/?d=ok.png")
    if "served" in spec:
        stub.routes["/img"] = (200, {"Content-Type": "image/png"}, spec["served"])
        image = stub.url + "/img"
    if "content" in spec:
        response = client.post("/predict", content=spec["content"], headers={"Content-Type": "application/json"})
    elif "json" in spec:
        response = client.post("/predict", json=spec["json"])
    else:
        task, regions = spec.get("body", ({"id": 1, "data": {"image": image}}, spec.get("regions", [kp(10, 10)])))
        request = body(image, regions, spec.get("config", original_label_config))
        request["tasks"] = [task]
        # json.dumps writes NaN as Python's json (and Starlette's parser) reads it; httpx's json= refuses it
        response = client.post("/predict", content=json.dumps(request), headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert words in response.json()["error"]
    assert "Traceback" not in response.text
    assert any(words in r.getMessage() and r.levelno >= logging.WARNING for r in caplog.records)
    assert client.get("/health").json()["status"] == "UP"


# -- 3. basic auth, and credentials never logged -----------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path", "payload"),
    [("GET", "/health", None), ("GET", "/versions", None), ("POST", "/setup", {"project": "1.1"}),
     ("POST", "/predict", {"tasks": []})],
)
def test_basic_auth_guards_every_endpoint_but_webhook(make_backend, method, path, payload):
    client = make_backend(basic_auth=("ls", "s3cret"))
    for auth in (None, ("ls", "wrong"), ("LS", "s3cret"), ("ls", "s3cret!"), ("", "")):
        response = client.request(method, path, json=payload, auth=auth)
        assert response.status_code == 401, (auth, response.text)
        assert response.headers["WWW-Authenticate"].startswith("Basic")
    garbled = client.request(method, path, json=payload, headers={"Authorization": "Basic %%%not-base64"})
    assert garbled.status_code == 401
    ok = client.request(method, path, json=payload, auth=("ls", "s3cret"))
    assert ok.status_code == (400 if path == "/predict" else 200), ok.text  # past auth: the empty task list


def test_webhook_accepts_unauthenticated_events_and_only_logs(make_backend, caplog):
    caplog.set_level(logging.INFO)
    client = make_backend(basic_auth=("ls", "s3cret"))
    response = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
    assert response.status_code == 200 and response.json()["action"] == "START_TRAINING"
    assert any("START_TRAINING" in r.getMessage() for r in caplog.records)
    assert client.post("/webhook", json={"action": ["odd"]}).status_code == 200
    assert client.post("/webhook", content=b"nope").status_code == 400


def test_api_key_and_auth_never_reach_the_log(make_backend, http_stub, original_label_config, caplog):
    caplog.set_level(logging.DEBUG)  # everything, httpx and httpcore included
    key = "legacy-SECRET-key-4242"
    ls = http_stub()
    ls.routes["/data/upload/1/ok.png"] = (200, {}, png_bytes())
    ls.routes["/data/upload/1/denied.png"] = (401, {}, b'{"detail": "bad token"}')
    ls.routes["/tasks/1/presign/"] = (302, {"Location": ls.url + "/data/upload/1/ok.png"}, b"")
    client = make_backend(label_studio_url=ls.url, api_key=key)
    assert client.post("/predict", json=body("/data/upload/1/ok.png", [kp(10, 10)], original_label_config)).is_success
    assert client.post("/predict", json=body("s3://b/ok.png", [kp(10, 10)], original_label_config)).is_success
    denied = client.post("/predict", json=body("/data/upload/1/denied.png", [kp(10, 10)], original_label_config))
    assert denied.status_code == 422 and key not in denied.text
    assert all(hit[2].get("Authorization") == f"Token {key}" for hit in ls.hits)  # the key was in use
    logged = "\n".join(f"{r.getMessage()} {r.args!r}" for r in caplog.records)
    assert "denied.png answered HTTP 401" in logged  # the failing path did log
    assert key not in logged


def _pat() -> str:
    """A personal access token as Label Studio issues it: a JWT whose payload says token_type refresh."""
    import base64

    def b64(d: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")

    return f"{b64({'alg': 'HS256'})}.{b64({'token_type': 'refresh', 'exp': 4102444800})}.sig"


def test_label_studio_down_then_back_and_token_refused_mid_session(
    make_backend, http_stub, original_label_config, caplog
):
    """Faults between the backend and Label Studio: each click fails with a clear message, and the next
    one succeeds once Label Studio is back, or once a refused access token has been refreshed."""
    ls = http_stub()
    ls.routes["/api/token/refresh/"] = (200, {"Content-Type": "application/json"},
                                        json.dumps({"access": "access-1"}).encode())
    ls.routes["/data/upload/1/cat.png"] = (503, {}, b"starting")
    client = make_backend(label_studio_url=ls.url, api_key=_pat())
    request = body("/data/upload/1/cat.png", [kp(30, 20)], original_label_config)
    down = client.post("/predict", json=request)
    assert 400 <= down.status_code < 600 and "503" in down.json()["error"]
    ls.routes["/data/upload/1/cat.png"] = (200, {"Content-Type": "image/png"}, png_bytes())
    back = client.post("/predict", json=request)
    assert back.status_code == 200 and back.json()["results"][0]["result"]

    # Label Studio restarted and no longer accepts access-1 (its stated expiry is far away): the backend
    # refreshes once and asks again, instead of failing every click until the old token expires.
    ls.routes["/api/token/refresh/"] = (200, {"Content-Type": "application/json"},
                                        json.dumps({"access": "access-2"}).encode())
    ls.routes["/data/upload/1/dog.png"] = (401, {}, b"token expired")
    refusals = {"n": 0}
    original = ls.routes

    class Refuse401Once(dict):
        def get(self, key, default=None):
            if key == "/data/upload/1/dog.png":
                auth = ls.hits[-1][2].get("Authorization", "")
                if auth == "Bearer access-1":
                    refusals["n"] += 1
                    return (401, {}, b"token expired")
                return (200, {"Content-Type": "image/png"}, png_bytes())
            return original.get(key, default)

    ls.routes = Refuse401Once(original)
    dog = client.post("/predict", json=body("/data/upload/1/dog.png", [kp(30, 20)], original_label_config))
    assert dog.status_code == 200, dog.text
    assert refusals["n"] == 1
    refresh_calls = [h for h in ls.hits if h[1].startswith("/api/token/refresh/")]
    assert len(refresh_calls) == 2
    assert _pat() not in caplog.text
