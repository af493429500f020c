"""Against a real Label Studio 1.23.2: provision a project, connect ``label-anything serve`` as an
interactive backend, click through Label Studio's own API, save an annotation, export it.

Images: Chelsea as a JPEG whose name has a space and a non-ASCII character, once uploaded and once
served by a local-files storage. Masks must equal the engine's answer for the same prompt.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from label_anything.engine import Prompt, decode, encode
from label_anything.engine.cache import to_storage_dtype
from label_anything.geometry.masks import mask_to_xyxy, polygons_to_mask
from label_anything.imaging.decode import read_image

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
H, W = 300, 451


def kp(x, y, positive=True):
    return {
        "original_width": W,
        "original_height": H,
        "image_rotation": 0,
        "id": f"k{x}_{y}",
        "value": {"x": x * 100 / W, "y": y * 100 / H, "width": 0.5, "keypointlabels": ["cat"]},
        "is_positive": positive,
        "from_name": "KeyPointLabels",
        "to_name": "image",
        "type": "keypointlabels",
        "origin": "manual",
    }


def rect(x0, y0, x1, y1):
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
            "rectanglelabels": ["cat"],
        },
        "from_name": "RectangleLabels",
        "to_name": "image",
        "type": "rectanglelabels",
        "origin": "manual",
    }


def ok(response, status=(200, 201)):
    assert response.status_code in status, f"{response.request.method} {response.request.url}: {response.text}"
    return response.json()


@pytest.fixture(scope="module")
def project(label_studio, original_label_config, chelsea_jpeg):
    client = label_studio.client
    proj = client.create_project("label-anything it", original_label_config)
    client.import_file(proj["id"], chelsea_jpeg)
    folder = label_studio.document_root / "photos ü"
    folder.mkdir(exist_ok=True)
    shutil.copy(chelsea_jpeg, folder / chelsea_jpeg.name)
    storage = client.add_local_storage(proj["id"], folder, "photos", regex=r".*\.jpg")
    client.sync_storage(storage["id"])
    tasks = client.tasks(proj["id"])
    refs = [t["data"]["image"] for t in tasks]
    assert len(tasks) == 2, refs
    assert any(r.startswith("/data/upload/") for r in refs) and any(r.startswith("/data/local-files/") for r in refs)
    return proj, tasks


def connect(label_studio, project_id, url, **extra):
    ml = label_studio.client.add_backend(project_id, url, **extra)
    assert ml.get("readable_state") == "Connected", ml
    return ml


def click(label_studio, ml_id, task_id, regions):
    body = {"task": task_id, "context": {"result": regions}}
    answer = ok(label_studio.api.post(f"/api/ml/{ml_id}/interactive-annotating", json=body))
    data = answer.get("data", answer)
    return data["result"]


def brush(region) -> np.ndarray:
    from label_studio_sdk.converter.brush import decode_rle

    return (
        np.reshape(decode_rle(region["value"]["rle"]), (region["original_height"], region["original_width"], 4))[
            :, :, 3
        ]
        > 0
    )


def engine_mask(model, image, prompt) -> np.ndarray:
    """What the engine answers, from the same float16-stored embedding the server's cache keeps."""
    return decode(model, to_storage_dtype(encode(model, image)), prompt).best()[0]


def check_suggestion(result, expected):
    kinds = {r["type"] for r in result}
    assert kinds == {"brushlabels", "rectanglelabels", "polygonlabels"}, kinds
    (region,) = [r for r in result if r["type"] == "brushlabels"]
    mask = brush(region)
    # float noise may flip a handful of pixels that sit on the threshold (see tests/test_server.py)
    assert np.count_nonzero(mask != expected) <= 10
    (box,) = [r for r in result if r["type"] == "rectanglelabels"]
    v = box["value"]
    x0, y0, x1, y1 = mask_to_xyxy(mask)
    assert v["x"] * W / 100 == pytest.approx(x0) and v["y"] * H / 100 == pytest.approx(y0)
    assert (v["x"] + v["width"]) * W / 100 == pytest.approx(x1)
    assert (v["y"] + v["height"]) * H / 100 == pytest.approx(y1)
    polys = [np.array(r["value"]["points"]) * [W / 100, H / 100] for r in result if r["type"] == "polygonlabels"]
    # tolerance 0: exact cover of the parts the click path keeps (the largest 50, each with its 32 largest holes)
    expected = polygons_to_mask(exact_polygons(mask), H, W)
    np.testing.assert_array_equal(polygons_to_mask(polys, H, W), expected)
    assert np.count_nonzero(expected & ~mask) == 0
    return mask


@pytest.mark.parametrize("auth", [False, True], ids=["open", "basic-auth"])
def test_interactive_clicks_through_label_studio(
    label_studio, start_backend, project, mobile_sam_model, chelsea_jpeg, auth
):
    proj, tasks = project
    extra, creds = [], None
    ml_extra = {}
    if auth:
        creds = ("ls-user", "ls-pass-1")
        extra = ["--basic-auth", "ls-user:ls-pass-1"]
        ml_extra = {"auth_method": "BASIC_AUTH", "basic_auth_user": creds[0], "basic_auth_pass": creds[1]}
    exact_polygons = ("--poly-tolerance", "0", "--poly-min-area", "0")
    backend = start_backend("--out-bbox", "--out-poly", *exact_polygons, *extra, auth=creds)
    ml = connect(label_studio, proj["id"], backend.url, **ml_extra)
    image = read_image(chelsea_jpeg)
    for task in tasks:
        points = click(label_studio, ml["id"], task["id"], [kp(200, 120), kp(380, 40, positive=False)])
        check_suggestion(
            points, engine_mask(mobile_sam_model, image, Prompt.from_lists([(200, 120), (380, 40)], [1, 0]))
        )
        box = (120, 20, 400, 290)
        boxed = click(label_studio, ml["id"], task["id"], [rect(*box)])
        check_suggestion(boxed, engine_mask(mobile_sam_model, image, Prompt.from_lists(box=box)))
    assert "Traceback" not in backend.log.read_text()


def test_annotation_from_suggestion_is_exported(label_studio, start_backend, project):
    proj, tasks = project
    backend = start_backend("--out-bbox")
    ml = connect(label_studio, proj["id"], backend.url)
    task = tasks[0]
    result = click(label_studio, ml["id"], task["id"], [kp(200, 120)])
    saved = ok(label_studio.api.post(f"/api/tasks/{task['id']}/annotations", json={"result": result}))
    exported = ok(label_studio.api.get(f"/api/projects/{proj['id']}/export", params={"exportType": "JSON"}))
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "labelstudio-export-chelsea.json").write_text(json.dumps(exported, indent=1, ensure_ascii=False))
    (entry,) = [t for t in exported if t["id"] == task["id"]]
    (annotation,) = [a for a in entry["annotations"] if a["id"] == saved["id"]]
    got = {r["type"]: r for r in annotation["result"]}
    sent = {r["type"]: r for r in result}
    assert got.keys() == sent.keys() == {"brushlabels", "rectanglelabels"}
    assert got["brushlabels"]["value"]["rle"] == sent["brushlabels"]["value"]["rle"]
    assert got["rectanglelabels"]["value"]["width"] == pytest.approx(sent["rectanglelabels"]["value"]["width"])


def exact_polygons(mask: np.ndarray) -> list[np.ndarray]:
    """What the backend's polygons must be at tolerance 0 and min area 0, caps included."""
    from label_anything.geometry.polygons import mask_to_polygons
    from label_anything.labelstudio.results import MAX_POLYGON_HOLES, MAX_POLYGON_PARTS

    return mask_to_polygons(mask, tolerance=0, min_area=0, max_parts=MAX_POLYGON_PARTS, max_holes=MAX_POLYGON_HOLES)
