"""The ML backend over HTTP, with MobileSAM random weights: protocol shapes, masks equal to the engine's,
refinement equal to the official predictor, errors as 4xx JSON, image sources and their safety."""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from starlette.testclient import TestClient

from label_anything.app.interactive import Backend, ServeOptions
from label_anything.engine import Prompt, decode, encode
from label_anything.engine.cache import EmbeddingCache
from label_anything.errors import ImageError
from label_anything.imaging.decode import read_image
from label_anything.imaging.fetch import AccessDeniedError, ImageFetcher, local_file_path
from label_anything.labelstudio.results import OutputOptions
from label_anything.server.http import create_app

H, W = 300, 451
CONFIG = ""  # the original tool's label config, set from the ``original_label_config`` fixture


@pytest.fixture(autouse=True, scope="module")
def _label_config(original_label_config):
    global CONFIG
    CONFIG = original_label_config


def kp(x, y, positive=True, label="cat"):
    """A smart keypoint at pixel (x, y) as Label Studio sends it (percent)."""
    return {
        "original_width": W,
        "original_height": H,
        "image_rotation": 0,
        "id": f"k{x}_{y}",
        "value": {"x": x * 100 / W, "y": y * 100 / H, "width": 0.5, "keypointlabels": [label]},
        "is_positive": positive,
        "from_name": "KeyPointLabels",
        "to_name": "image",
        "type": "keypointlabels",
        "origin": "manual",
    }


def rect(x0, y0, x1, y1, label="cat"):
    return {
        "original_width": W,
        "original_height": H,
        "image_rotation": 0,
        "id": "r1",
        "value": {
            "x": x0 * 100 / W,
            "y": y0 * 100 / H,
            "width": (x1 - x0) * 100 / W,
            "height": (y1 - y0) * 100 / H,
            "rotation": 0,
            "rectanglelabels": [label],
        },
        "from_name": "RectangleLabels",
        "to_name": "image",
        "type": "rectanglelabels",
    }


def assert_same_mask(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to float noise: the same computation run in a worker thread may sum in another order,
    which flips the rare pixel whose logit sits within ~1e-6 of the threshold (random weights give many
    logits near 0). Measured: at most 5 of 135,300 pixels; a real bug changes thousands."""
    assert actual.shape == expected.shape
    assert expected.any()
    assert np.count_nonzero(actual != expected) <= max(10, expected.size // 10_000)


def brush_mask(region: dict) -> np.ndarray:
    from label_studio_sdk.converter.brush import decode_rle

    w, h = region["original_width"], region["original_height"]
    return np.reshape(decode_rle(region["value"]["rle"]), (h, w, 4))[:, :, 3] > 0


@pytest.fixture()
def make_client(backend_client, chelsea_jpeg):
    """Factory: a TestClient on a fresh backend (float32 cache: masks equal the engine's bit for bit)."""

    def make(**options) -> TestClient:
        outputs = OutputOptions(mask=True, bbox=True, poly=True, poly_tolerance=0.0, poly_min_area=0.0)
        serve = ServeOptions(outputs=options.pop("outputs", outputs), **options)
        return backend_client(ImageFetcher(local_files_root=chelsea_jpeg.parent), serve)

    return make


@pytest.fixture()
def client(make_client):
    return make_client()


@pytest.fixture(scope="module")
def task(chelsea_jpeg):
    return {"id": 7, "data": {"image": "/data/local-files/?d=" + quote(chelsea_jpeg.name)}}


@pytest.fixture(scope="module")
def image(chelsea_jpeg):
    return read_image(chelsea_jpeg)


@pytest.fixture(scope="module")
def embedding(mobile_sam_model, image):
    return encode(mobile_sam_model, image)


def predict(client, task, regions, config=None):
    body = {
        "tasks": [task],
        "project": "1.1700000000",
        "label_config": config or CONFIG,
        "params": {"login": None, "password": None, "context": {"result": regions}},
    }
    return client.post("/predict", json=body)


def by_type(prediction):
    out = {}
    for region in prediction["result"]:
        out.setdefault(region["type"], []).append(region)
    return out


# -- protocol --------------------------------------------------------------------------------------
def test_health_setup_versions_webhook(client, mobile_sam_model):
    assert client.get("/health").json()["status"] == "UP"
    t0 = time.perf_counter()
    setup = client.post(
        "/setup",
        json={
            "project": "3.1700000000",
            "schema": CONFIG,
            "hostname": "x",
            "access_token": "t",
            "extra_params": None,
        },
    )
    assert setup.status_code == 200 and time.perf_counter() - t0 < 0.5
    version = setup.json()["model_version"]
    assert version == mobile_sam_model.info.model_id and version.startswith("mobile_sam-vit_t-")
    assert client.get("/versions").json() == {"versions": [version]}
    webhook = client.post("/webhook", json={"action": "START_TRAINING"})
    assert webhook.status_code == 200 and webhook.json() == {"status": "ok", "action": "START_TRAINING"}


def test_click_gives_mask_box_polygons_equal_to_engine(client, task, mobile_sam_model, image, embedding):
    from label_anything.geometry.masks import mask_to_xyxy, polygons_to_mask

    response = predict(client, task, [kp(200, 120), kp(380, 40, positive=False)])
    assert response.status_code == 200, response.text
    prediction = response.json()["results"][0]
    assert prediction["model_version"] == mobile_sam_model.info.model_id
    expected, score, _ = decode(mobile_sam_model, embedding, Prompt.from_lists([(200, 120), (380, 40)], [1, 0])).best()
    assert expected.any()
    regions = by_type(prediction)
    (brush,) = regions["brushlabels"]
    assert brush["from_name"] == "BrushLabels" and brush["to_name"] == "image"
    assert brush["value"]["brushlabels"] == ["cat"] and brush["value"]["format"] == "rle"
    assert (brush["original_width"], brush["original_height"], brush["image_rotation"]) == (W, H, 0)
    served = brush_mask(brush)
    assert_same_mask(served, expected)
    assert prediction["score"] == pytest.approx(score, abs=1e-5)
    (box,) = regions["rectanglelabels"]
    v = box["value"]
    x0, y0, x1, y1 = mask_to_xyxy(served)
    assert (v["x"] * W / 100, v["y"] * H / 100) == (pytest.approx(x0), pytest.approx(y0))
    assert ((v["x"] + v["width"]) * W / 100, (v["y"] + v["height"]) * H / 100) == (
        pytest.approx(x1),
        pytest.approx(y1),
    )
    polygons = [np.array(r["value"]["points"]) * [W / 100, H / 100] for r in regions["polygonlabels"]]
    # tolerance 0: exact cover of the parts the click path keeps (the largest 50, each with its 32 largest holes)
    expected = polygons_to_mask(exact_polygons(served), H, W)
    np.testing.assert_array_equal(polygons_to_mask(polygons, H, W), expected)
    assert np.count_nonzero(expected & ~served) == 0
    ids = [r["id"] for r in prediction["result"]]
    assert len(set(ids)) == len(ids)
    assert all(isinstance(r["score"], float) for r in prediction["result"])


def test_a_task_full_of_brush_regions_gets_the_same_answer(client, task):
    """Label Studio sends every annotation and draft of the task with each click; their brush RLE is dropped
    before parsing (labelstudio.request_body) and the answer does not change."""
    from label_anything.labelstudio.rle import brush_rle_encode

    light = predict(client, task, [kp(200, 120)])
    stored_mask = np.zeros((H, W), dtype=bool)
    stored_mask[50:200, 100:300] = True
    stored = [{"id": f"r{k}", "type": "brushlabels", "from_name": "BrushLabels", "to_name": "image",
               "original_width": W, "original_height": H,
               "value": {"format": "rle", "rle": brush_rle_encode(np.roll(stored_mask, k, axis=1)),
                         "brushlabels": ["cat"]}} for k in range(20)]
    heavy_task = {**task, "annotations": [{"id": 1, "result": stored}], "drafts": [{"id": 2, "result": stored}]}
    heavy = predict(client, heavy_task, [kp(200, 120)])
    assert light.status_code == heavy.status_code == 200, heavy.text
    (a,), (b,) = (by_type(r.json()["results"][0])["brushlabels"] for r in (light, heavy))
    assert a["value"]["rle"] == b["value"]["rle"] and len(b["value"]["rle"]) > 10


def test_rectangle_and_points_plus_rectangle(client, task, mobile_sam_model, embedding):
    box = (120, 20, 400, 290)
    prediction = predict(client, task, [rect(*box)]).json()["results"][0]
    expected = decode(mobile_sam_model, embedding, Prompt.from_lists(box=box)).best()[0]
    assert_same_mask(brush_mask(by_type(prediction)["brushlabels"][0]), expected)

    prediction = predict(client, task, [rect(*box), kp(250, 150)]).json()["results"][0]
    expected = decode(mobile_sam_model, embedding, Prompt.from_lists([(250, 150)], box=box)).best()[0]
    assert_same_mask(brush_mask(by_type(prediction)["brushlabels"][0]), expected)


def test_refinement_equals_official_predictor(client, task, mobile_sam_model, image, embedding):
    from mobile_sam import SamPredictor

    first = [kp(200, 120)]
    second = [kp(200, 120), kp(300, 200, positive=False)]
    answer = brush_mask(by_type(predict(client, task, first).json()["results"][0])["brushlabels"][0])
    assert_same_mask(answer, decode(mobile_sam_model, embedding, Prompt.from_lists([(200, 120)])).best()[0])
    refined = brush_mask(by_type(predict(client, task, second).json()["results"][0])["brushlabels"][0])

    predictor = SamPredictor(mobile_sam_model.network)
    predictor.set_image(image)
    _, scores, logits = predictor.predict(np.array([[200.0, 120.0]]), np.array([1]), multimask_output=True)
    masks, _, _ = predictor.predict(
        np.array([[200.0, 120.0], [300.0, 200.0]]),
        np.array([1, 0]),
        mask_input=logits[int(np.argmax(scores))][None],
        multimask_output=False,
    )
    assert_same_mask(refined, masks[0])


def test_no_refine_answers_fresh(make_client, task, mobile_sam_model, embedding):
    client = make_client(refine=False)
    predict(client, task, [kp(200, 120)])
    prediction = predict(client, task, [kp(200, 120), kp(300, 200, positive=False)]).json()["results"][0]
    fresh = decode(mobile_sam_model, embedding, Prompt.from_lists([(200, 120), (300, 200)], [1, 0])).best()[0]
    assert_same_mask(brush_mask(by_type(prediction)["brushlabels"][0]), fresh)


def test_open_task_answers_at_once_and_encodes_in_background(client, task):
    body = {
        "tasks": [task, {"id": 8, "data": {"image": task["data"]["image"]}}],
        "project": "1.1",
        "label_config": CONFIG,
        "params": {"context": None},
    }
    t0 = time.perf_counter()
    response = client.post("/predict", json=body)
    assert time.perf_counter() - t0 < 1.0
    # one empty list per task: Label Studio stores no prediction (no empty "<model> 0.00%" tab) and so
    # calls /predict again on the next opening; no rectangles on these tasks, so nothing to suggest
    assert response.json()["results"] == [[], []]
    backend = client.app.state.backend
    assert backend.wait_for_prefetch(60)
    assert len(backend.cache) == 1


def test_label_config_from_setup_is_used(client, task, mobile_sam_model, embedding):
    config = CONFIG.replace('name="BrushLabels"', 'name="Mask"')  # a control name only this config has
    client.post("/setup", json={"project": "5.1700000000", "schema": config})
    body = {"tasks": [task], "project": "5.1700000001", "params": {"context": {"result": [kp(200, 120)]}}}
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.text
    (brush,) = by_type(response.json()["results"][0])["brushlabels"]
    assert brush["from_name"] == "Mask" and brush["value"]["brushlabels"] == ["cat"]
    assert_same_mask(brush_mask(brush), decode(mobile_sam_model, embedding, Prompt.from_lists([(200, 120)])).best()[0])
    body["project"] = "6.1700000000"  # no /setup for this project, no label_config in the request
    refused = client.post("/predict", json=body)
    assert refused.status_code == 400 and "/setup was not called" in refused.json()["error"]


def test_deleted_regions_give_empty_result(client, task):
    assert predict(client, task, []).json()["results"][0]["result"] == []


SAM_EXAMPLE_CONFIG = """
<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image"><Label value="Banana"/><Label value="Orange"/></BrushLabels>
  <KeyPointLabels name="tag2" toName="image" smart="true">
    <Label value="Banana"/><Label value="Orange"/>
  </KeyPointLabels>
  <RectangleLabels name="tag3" toName="image"><Label value="Banana"/><Label value="Orange"/></RectangleLabels>
</View>
"""
"""The label config of the official ML backend's SAM example (label_studio_ml/examples/segment_anything_model)."""


def test_context_without_names_from_other_clients(client, task, mobile_sam_model, embedding):
    """The SAM example's own test sends a smart rectangle with no from_name, to_name, id or rotation: one
    image and one control of each type make them unambiguous, so it is answered like Label Studio's."""
    box = (120, 20, 400, 290)
    region = {
        "original_width": W,
        "original_height": H,
        "type": "rectanglelabels",
        "value": {"x": box[0] * 100 / W, "y": box[1] * 100 / H, "width": (box[2] - box[0]) * 100 / W,
                  "height": (box[3] - box[1]) * 100 / H, "rectanglelabels": ["Orange"]},
    }
    response = predict(client, task, [region], SAM_EXAMPLE_CONFIG)
    assert response.status_code == 200, response.text
    regions = by_type(response.json()["results"][0])
    (brush,) = regions["brushlabels"]
    assert (brush["from_name"], brush["to_name"], brush["value"]["brushlabels"]) == ("tag", "image", ["Orange"])
    assert brush["image_rotation"] == 0
    expected = decode(mobile_sam_model, embedding, Prompt.from_lists(box=box)).best()[0]
    assert_same_mask(brush_mask(brush), expected)
    (rectangle,) = regions["rectanglelabels"]
    assert rectangle["from_name"] == "tag3"
    # a keypoint without names, beside one with them: one prompt
    point = {k: v for k, v in kp(200, 120, label="Banana").items() if k not in ("from_name", "to_name", "id")}
    response = predict(client, task, [point, kp(380, 40, positive=False, label="Banana")], SAM_EXAMPLE_CONFIG)
    assert response.status_code == 200, response.text
    (brush,) = by_type(response.json()["results"][0])["brushlabels"]
    expected = decode(mobile_sam_model, embedding, Prompt.from_lists([(200, 120), (380, 40)], [1, 0])).best()[0]
    assert_same_mask(brush_mask(brush), expected)


def test_context_without_to_name_on_two_images_is_refused(client, task, caplog):
    config = SAM_EXAMPLE_CONFIG.replace(
        '<Image name="image" value="$image" zoom="true"/>',
        '<Image name="image" value="$image"/><Image name="second" value="$other"/>',
    )
    point = {k: v for k, v in kp(200, 120, label="Banana").items() if k != "to_name"}
    response = predict(client, task, [point], config)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert "no to_name" in error and "'image', 'second'" in error
    assert any("no to_name" in r.getMessage() for r in caplog.records)


def test_rotated_view_answers_in_the_image_frame(client, task, mobile_sam_model, embedding):
    """Label Studio's rotate button turns the whole canvas (the Konva stage) and maps each click back
    through the stage transform, so a rotated view sends the same percent of the unrotated image, the same
    original_width/height, and only image_rotation differs. The answer is the unrotated one, tagged with
    the rotation the annotator is looking at."""
    expected = decode(mobile_sam_model, embedding, Prompt.from_lists([(200, 120)])).best()[0]
    for rotation in (90, 180, 270):
        point = dict(kp(200, 120), image_rotation=rotation)
        response = predict(client, task, [point])
        assert response.status_code == 200, response.text
        prediction = response.json()["results"][0]
        assert {r["image_rotation"] for r in prediction["result"]} == {rotation}
        (brush,) = by_type(prediction)["brushlabels"]
        assert (brush["original_width"], brush["original_height"]) == (W, H)
        assert_same_mask(brush_mask(brush), expected)


# -- errors: 4xx JSON, one log line, no stack trace to the client ------------------------------------
@pytest.mark.parametrize(
    ("regions", "config", "status", "words"),
    [
        ([kp(200, 120, label="dog")], None, 400, "label 'dog' is not in"),
        (
            [kp(200, 120)],
            '<View><Image name="image" value="$image"/>'
            '<KeyPointLabels name="k" toName="image"><Label value="cat"/></KeyPointLabels></View>',
            400,
            "no control of type",
        ),
        ([dict(kp(200, 120), original_width=W + 1)], None, 422, "shows it as 452x300"),
        ([dict(kp(200, 120), to_name="other")], None, 400, "toName='other'"),
        ([{**kp(200, 120), "value": {"x": "left", "y": 1, "keypointlabels": ["cat"]}}], None, 400, "finite number"),
    ],
)
def test_bad_requests_are_4xx_json(client, task, regions, config, status, words, caplog):
    response = predict(client, task, regions, config)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]
    assert "Traceback" not in response.text
    assert any(words in r.getMessage() for r in caplog.records)


def _error(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and "Traceback" not in response.text
    return body["error"]


def test_bad_bodies_and_images(client, task):
    assert _error(client.post("/predict", content=b"{not json"), 400) == "the request body is not JSON"
    deep = b"[" * 200_000 + b"]" * 200_000  # beyond the parser's recursion limit: a 400, not a 500
    assert _error(client.post("/predict", content=deep), 400) == "the request body is not JSON"
    assert _error(client.post("/predict", json=[1]), 400) == "the request body must be a JSON object"
    assert "'tasks' must be a non-empty list" in _error(client.post("/predict", json={"tasks": []}), 400)
    no_config = client.post("/predict", json={"tasks": [task], "params": {"context": {"result": []}}})
    assert "no label_config" in _error(no_config, 400)
    for ref, words in [
        ("/data/local-files/?d=../../etc/passwd", "leaves the document root"),
        ("/data/local-files/?d=%2Fetc%2Fpasswd", "leaves the document root"),
        ("/data/local-files/?d=..%2F..%2Fetc%2Fpasswd", "leaves the document root"),
        ("file:///etc/passwd", "unsupported scheme 'file'"),
    ]:
        response = predict(client, {"id": 1, "data": {"image": ref}}, [kp(200, 120)])
        assert words in _error(response, 403), ref
    response = predict(client, {"id": 1, "data": {"image": "/data/local-files/?d=missing.jpg"}}, [kp(200, 120)])
    assert "'missing.jpg' does not exist" in _error(response, 422)
    response = predict(client, {"id": 1, "data": {"image": "/data/upload/1/x.jpg"}}, [kp(200, 120)])
    assert "LABEL_STUDIO_URL" in _error(response, 422)
    response = predict(client, {"id": 1, "data": {"photo": "x.jpg"}}, [kp(200, 120)])
    assert "task 1 has no data['image']" in _error(response, 400)


def test_basic_auth(make_client, task):
    client = make_client(basic_auth=("ls", "s3cret"))
    for response in [
        client.get("/health"),
        client.get("/health", auth=("ls", "wrong")),
        client.get("/health", auth=("other", "s3cret")),
        client.post("/setup", json={"project": "1.1", "schema": CONFIG}),
        predict(client, task, [kp(200, 120)]),
    ]:
        assert _error(response, 401) == "authentication required"
        assert response.headers["www-authenticate"] == 'Basic realm="label-anything"'
    assert client.get("/health", auth=("ls", "s3cret")).json()["status"] == "UP"
    webhook = client.post("/webhook", json={"action": "ANNOTATION_CREATED"})  # Label Studio sends no auth here
    assert webhook.status_code == 200 and webhook.json()["action"] == "ANNOTATION_CREATED"
    client.auth = ("ls", "s3cret")
    prediction = predict(client, task, [kp(200, 120)]).json()["results"][0]
    assert sorted(by_type(prediction)) == ["brushlabels", "polygonlabels", "rectanglelabels"]
    assert brush_mask(by_type(prediction)["brushlabels"][0]).any()


# -- image sources ---------------------------------------------------------------------------------
def test_local_files_are_confined_to_the_root(tmp_path):
    root = tmp_path / "root"
    (root / "sub dir").mkdir(parents=True)
    (root / "sub dir" / "é 1.jpg").write_bytes(b"x")
    (tmp_path / "secret.jpg").write_bytes(b"x")
    (root / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    assert local_file_path(root, "sub dir/é 1.jpg").name == "é 1.jpg"
    for bad in ["../secret.jpg", "/etc/passwd", "sub dir/../../secret.jpg", "link.jpg", "a\\..\\b", ""]:
        with pytest.raises(AccessDeniedError):
            local_file_path(root, bad)
    with pytest.raises(ImageError):
        local_file_path(root, "nope.jpg")


def test_edited_local_file_is_read_again(tmp_path, chelsea):
    """The decoded-image cache knows a local file by path, size and modification time: an image edited
    (or replaced) on disk while the backend runs is served as it is now, an unchanged one from memory."""
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.fromarray(chelsea).save(path)
    fetcher = ImageFetcher(local_files_root=tmp_path)
    ref = "/data/local-files/?d=photo.png"
    first, digest = fetcher.fetch(ref)
    assert np.array_equal(first, chelsea)
    assert fetcher.fetch(ref)[0] is first  # unchanged: not read and decoded again
    edited = np.ascontiguousarray(chelsea[::-1])  # same size, other pixels
    Image.fromarray(edited).save(path)
    stat = path.stat()  # file clocks tick coarsely: make sure this edit is seen as a later one
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10_000_000))
    image, new_digest = fetcher.fetch(ref)
    assert new_digest != digest and np.array_equal(image, edited)
    replaced = tmp_path / "new.png"  # replaced by a rename, as editors and rsync do
    Image.fromarray(chelsea).save(replaced)
    os.replace(replaced, path)
    image, digest_back = fetcher.fetch(ref)
    assert digest_back == digest and np.array_equal(image, chelsea)


def _jwt(payload: dict) -> str:
    def b64(d):
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")

    return f"{b64({'alg': 'HS256'})}.{b64(payload)}.sig"


def test_fetch_from_label_studio_with_personal_access_token(chelsea_jpeg):
    jpeg = chelsea_jpeg.read_bytes()
    seen = []
    refreshes = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/api/token/refresh/":
            refreshes.append(json.loads(request.content))
            # expires at once: the next fetch must refresh again
            return httpx.Response(200, json={"access": _jwt({"exp": time.time() + 10, "n": len(refreshes)})})
        if request.url.host == "ls.test":
            assert request.headers["authorization"].startswith("Bearer ")
            if request.url.path.startswith("/tasks/"):
                return httpx.Response(302, headers={"location": "https://bucket.test/obj.jpg?sig=1"})
            return httpx.Response(200, content=jpeg)
        assert "authorization" not in request.headers  # the key never leaves Label Studio
        return httpx.Response(200, content=jpeg)

    pat = _jwt({"token_type": "refresh", "exp": time.time() + 3600})
    fetcher = ImageFetcher(
        "http://ls.test", pat, allowed_hosts=["elsewhere.test"], transport=httpx.MockTransport(handler)
    )
    name = quote(chelsea_jpeg.name)
    image, digest = fetcher.fetch(f"/data/upload/1/abc-{name}")
    assert image.shape == (H, W, 3) and refreshes == [{"refresh": pat}]
    assert seen[-1].url.raw_path.decode().endswith(name)
    fetcher.fetch("s3://bucket/a b.jpg", task_id=12)
    presign = next(r for r in seen if r.url.path.startswith("/tasks/"))
    fileuri = presign.url.params["fileuri"]
    assert presign.url.path == "/tasks/12/presign/" and base64.urlsafe_b64decode(fileuri) == b"s3://bucket/a b.jpg"
    fetcher.fetch("https://elsewhere.test/x.jpg")
    assert len(refreshes) == 2  # the access token lives 10 s < 30 s margin: refreshed for each LS call
    n = len(seen)
    assert fetcher.fetch(f"/data/upload/1/abc-{name}")[1] == digest and len(seen) == n  # cached


def test_legacy_token(chelsea_jpeg):
    def handler(request):
        assert request.headers["authorization"] == "Token abc123"
        return httpx.Response(200, content=chelsea_jpeg.read_bytes())

    fetcher = ImageFetcher("http://ls.test/", "abc123", transport=httpx.MockTransport(handler))
    assert fetcher.fetch("/data/local-files/?d=x.jpg")[0].shape == (H, W, 3)


# -- over a real socket: concurrency and latency ------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_uvicorn_health_stays_responsive_and_click_latency(mobile_sam_model, chelsea_jpeg, task, capsys):
    import uvicorn

    backend = Backend(
        mobile_sam_model,
        ImageFetcher(local_files_root=chelsea_jpeg.parent),
        EmbeddingCache(),
        ServeOptions(outputs=OutputOptions(mask=True, bbox=True)),
    )
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(backend), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.05)
        body = {
            "tasks": [task],
            "project": "1.1",
            "label_config": CONFIG,
            "params": {"context": {"result": [kp(200, 120)]}},
        }
        cold: dict[str, float] = {}

        def cold_click():
            t0 = time.perf_counter()
            cold["status"] = httpx.post(base + "/predict", json=body, timeout=60).status_code
            cold["s"] = time.perf_counter() - t0

        worker = threading.Thread(target=cold_click)
        worker.start()
        time.sleep(0.3)  # the encoder is running now
        health = []
        while worker.is_alive():
            t0 = time.perf_counter()
            assert httpx.get(base + "/health", timeout=2).status_code == 200
            health.append(time.perf_counter() - t0)
            time.sleep(0.1)
        worker.join()
        assert cold["status"] == 200 and health and max(health) < 1.0
        warm = []
        for i in range(5):
            body["params"]["context"]["result"] = [kp(200 + 10 * i, 120)]
            t0 = time.perf_counter()
            response = httpx.post(base + "/predict", json=body, timeout=60)
            warm.append(time.perf_counter() - t0)
            assert response.status_code == 200, response.text
            assert sorted(by_type(response.json()["results"][0])) == ["brushlabels", "rectanglelabels"]
        with capsys.disabled():
            print(
                f"\n[latency, MobileSAM random weights, CPU, mask+box]"
                f" cold click {cold['s'] * 1e3:.0f} ms; "
                f"warm click median {np.median(warm) * 1e3:.0f} ms (min {min(warm) * 1e3:.0f}); "
                f"/health during cold click max {max(health) * 1e3:.0f} ms"
            )
    finally:
        server.should_exit = True
        thread.join(10)


def test_classical_engine_serves_without_weights(chelsea_jpeg, task):
    from label_anything.engine import load_model

    backend = Backend(load_model("classical", device="cpu"), ImageFetcher(local_files_root=chelsea_jpeg.parent))
    with TestClient(create_app(backend)) as client:
        assert client.post("/setup", json={"project": "1.1", "schema": CONFIG}).json()["model_version"]
        prediction = predict(client, task, [kp(200, 120)]).json()["results"][0]
    (region,) = prediction["result"]
    assert region["type"] == "brushlabels" and brush_mask(region)[120, 200]


def test_exif_rotated_photo_uses_the_orientation_label_studio_shows(client, chelsea, chelsea_jpeg, mobile_sam_model):
    """A JPEG stored sideways with EXIF orientation 6: Label Studio shows it upright (451 tall, 300 wide)
    and sends percent of that; the mask must come back at that size, on the pixels clicked."""
    from PIL import Image

    name = "sideways ü.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(chelsea).save(chelsea_jpeg.parent / name, quality=95, exif=exif)
    upright = read_image(chelsea_jpeg.parent / name)
    assert upright.shape[:2] == (W, H)
    sideways_task = {"id": 8, "data": {"image": "/data/local-files/?d=" + quote(name)}}
    x, y = 150, 300  # pixels of the upright image
    point = kp(0, 0)
    point.update(original_width=H, original_height=W,
                 value={"x": x * 100 / H, "y": y * 100 / W, "width": 0.5, "keypointlabels": ["cat"]})
    response = predict(client, sideways_task, [point])
    assert response.status_code == 200, response.text
    (brush,) = by_type(response.json()["results"][0])["brushlabels"]
    assert (brush["original_width"], brush["original_height"]) == (H, W)
    expected = decode(mobile_sam_model, encode(mobile_sam_model, upright), Prompt.from_lists([(x, y)])).best()[0]
    assert_same_mask(brush_mask(brush), expected)
    # Sizes of the stored (unrotated) pixels do not match what the browser showed: refused, not guessed.
    point["original_width"], point["original_height"] = W, H
    refused = predict(client, sideways_task, [point])
    assert refused.status_code == 422 and "decodes to 300x451" in refused.json()["error"]


def exact_polygons(mask: np.ndarray) -> list[np.ndarray]:
    """What the backend's polygons must be at tolerance 0 and min area 0, caps included."""
    from label_anything.geometry.polygons import mask_to_polygons
    from label_anything.labelstudio.results import MAX_POLYGON_HOLES, MAX_POLYGON_PARTS

    return mask_to_polygons(mask, tolerance=0, min_area=0, max_parts=MAX_POLYGON_PARTS, max_holes=MAX_POLYGON_HOLES)
