"""Boxes to masks in the Label Studio backend: a ``/predict`` without context ("Retrieve predictions", a task
opened) on a task that holds rectangles answers one mask per rectangle, its box as the prompt, under its label.

Task bodies have the shape Label Studio 1.23.2 sends (see label_anything/labelstudio/task_boxes.py).
MobileSAM random weights; masks must equal the engine's answer for the same box.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

import numpy as np
import pytest
from starlette.testclient import TestClient

from label_anything.app.interactive import ServeOptions
from label_anything.engine import Prompt, decode, encode
from label_anything.geometry.masks import polygons_to_mask
from label_anything.imaging.decode import read_image
from label_anything.imaging.fetch import ImageFetcher
from label_anything.labelstudio.results import OutputOptions

H, W = 300, 451
CAT_BOX = (120, 20, 400, 290)
PERSON_BOX = (30, 150, 200, 280)


def rect(box, label="cat", rotation=0, rid="r1", sized=True) -> dict:
    """A rectangle region as Label Studio stores it (percent of the image)."""
    x0, y0, x1, y1 = box
    region = {
        "id": rid,
        "from_name": "RectangleLabels",
        "to_name": "image",
        "type": "rectanglelabels",
        "image_rotation": 0,
        "value": {
            "x": x0 * 100 / W,
            "y": y0 * 100 / H,
            "width": (x1 - x0) * 100 / W,
            "height": (y1 - y0) * 100 / H,
            "rotation": rotation,
            "rectanglelabels": [label],
        },
        "origin": "manual",
    }
    if sized:
        region.update(original_width=W, original_height=H)
    return region


def annotation(regions, aid=1, updated="2026-11-30T18:45:54.003435Z", cancelled=False) -> dict:
    return {
        "id": aid,
        "result": regions,
        "was_cancelled": cancelled,
        "ground_truth": False,
        "created_at": "2026-11-30T18:45:54.003397Z",
        "updated_at": updated,
        "completed_by": 1,
        "task": 1,
        "project": 1,
    }


def prediction(regions, pid=1, version="coco-import") -> dict:
    return {"id": pid, "result": regions, "model_version": version, "score": 0.5,
            "created_at": "2026-11-30T18:45:53.806982Z", "updated_at": "2026-11-30T18:45:53.807011Z"}


@pytest.fixture(scope="module")
def image_ref(chelsea_jpeg) -> str:
    return "/data/local-files/?d=" + quote(chelsea_jpeg.name)


def make_task(image_ref, tid=1, annotations=(), predictions=()) -> dict:
    return {"id": tid, "data": {"image": image_ref}, "project": 1, "annotations": list(annotations),
            "predictions": list(predictions)}


@pytest.fixture(scope="module")
def embedding(mobile_sam_model, chelsea_jpeg):
    return encode(mobile_sam_model, read_image(chelsea_jpeg))


@pytest.fixture()
def make_client(backend_client, chelsea_jpeg):
    """Factory: a TestClient on a fresh backend (float32 cache: masks equal the engine's bit for bit)."""

    def make(**options) -> TestClient:
        outputs = options.pop("outputs", OutputOptions(mask=True, poly=True, poly_tolerance=0, poly_min_area=0))
        return backend_client(ImageFetcher(local_files_root=chelsea_jpeg.parent),
                              ServeOptions(outputs=outputs, **options))

    return make


def retrieve(client, tasks, config) -> list:
    """``/predict`` as "Retrieve predictions" sends it: every selected task, no context."""
    body = {"tasks": tasks, "project": "1.1764528000", "label_config": config,
            "params": {"login": None, "password": None, "context": None}}
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == len(tasks)
    return results


def brush_mask(region: dict) -> np.ndarray:
    from label_studio_sdk.converter.brush import decode_rle

    w, h = region["original_width"], region["original_height"]
    return np.reshape(decode_rle(region["value"]["rle"]), (h, w, 4))[:, :, 3] > 0


def assert_same_mask(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to float noise (a worker thread may sum in another order; see tests/test_server.py)."""
    assert actual.shape == expected.shape and expected.any()
    assert np.count_nonzero(actual != expected) <= 10


def engine(model, embedding, box):
    return decode(model, embedding, Prompt.from_lists(box=box)).best()


def test_rectangle_annotation_becomes_mask_of_its_box(
    make_client, original_label_config, image_ref, mobile_sam_model, embedding
):
    client = make_client()
    task = make_task(image_ref, annotations=[annotation([rect(CAT_BOX), rect(PERSON_BOX, "person", rid="r2")])])
    (answer,) = retrieve(client, [task], original_label_config)
    assert answer["model_version"] == mobile_sam_model.info.model_id
    brushes = [r for r in answer["result"] if r["type"] == "brushlabels"]
    assert [b["value"]["brushlabels"] for b in brushes] == [["cat"], ["person"]]
    assert all(b["from_name"] == "BrushLabels" and b["to_name"] == "image" for b in brushes)
    scores = []
    for brush, box in zip(brushes, (CAT_BOX, PERSON_BOX), strict=True):
        expected, score, _ = engine(mobile_sam_model, embedding, box)
        assert_same_mask(brush_mask(brush), expected)
        assert brush["score"] == pytest.approx(score, abs=1e-5)
        scores.append(score)
    assert answer["score"] == pytest.approx(np.mean(scores), abs=1e-5)
    # polygons too (--out-poly), under the rectangle's label, covering the cat's mask only
    polygons = [r for r in answer["result"] if r["type"] == "polygonlabels"]
    cat = [np.array(p["value"]["points"]) * [W / 100, H / 100]
           for p in polygons if p["value"]["polygonlabels"] == ["cat"]]
    assert polygons and cat
    cat_mask = brush_mask(brushes[0])
    assert np.count_nonzero(polygons_to_mask(cat, H, W) & ~cat_mask) == 0
    assert {r["type"] for r in answer["result"]} == {"brushlabels", "polygonlabels"}  # no --out-bbox


def test_option_off_answers_no_masks(make_client, original_label_config, image_ref):
    client = make_client(boxes_to_masks=False)
    task = make_task(image_ref, annotations=[annotation([rect(CAT_BOX)])])
    assert retrieve(client, [task], original_label_config) == [[]]
    backend = client.app.state.backend
    assert backend.wait_for_prefetch(60) and len(backend.cache) == 1  # still encoded, in the background


def test_which_rectangles_count(make_client, original_label_config, image_ref, mobile_sam_model, embedding):
    client = make_client(outputs=OutputOptions(mask=True))
    older = annotation([rect(PERSON_BOX, "person")], aid=1, updated="2026-11-30T10:00:00Z")
    newer = annotation([rect(CAT_BOX)], aid=2, updated="2026-11-30T11:00:00Z")
    skipped = annotation([rect(PERSON_BOX, "person")], aid=3, updated="2026-11-30T12:00:00Z", cancelled=True)
    from_prediction = make_task(image_ref, tid=2, predictions=[prediction([rect(PERSON_BOX, "person")])])
    tasks = [
        make_task(image_ref, tid=1, annotations=[older, newer, skipped], predictions=[prediction([rect(PERSON_BOX)])]),
        from_prediction,
        make_task(image_ref, tid=3),  # nothing to suggest: no prediction stored for it
    ]
    first, second, third = retrieve(client, tasks, original_label_config)
    (cat,) = first["result"]
    assert cat["value"]["brushlabels"] == ["cat"]
    assert_same_mask(brush_mask(cat), engine(mobile_sam_model, embedding, CAT_BOX)[0])
    (person,) = second["result"]
    assert person["value"]["brushlabels"] == ["person"]
    assert_same_mask(brush_mask(person), engine(mobile_sam_model, embedding, PERSON_BOX)[0])
    assert third == []


def test_bad_rectangles_are_skipped_not_fatal(
    make_client, original_label_config, image_ref, mobile_sam_model, embedding, caplog
):
    caplog.set_level(logging.INFO, logger="label_anything.server")
    client = make_client(outputs=OutputOptions(mask=True))
    regions = [
        rect(PERSON_BOX, "person", rotation=30, rid="turned"),
        rect(PERSON_BOX, "dog", rid="unknown-label"),
        rect(CAT_BOX, sized=False, rid="no-size"),  # imported without original_width/height: the image's size
    ]
    good, missing_image = retrieve(
        client,
        [make_task(image_ref, annotations=[annotation(regions)]),
         make_task("/data/local-files/?d=missing.jpg", tid=2, annotations=[annotation([rect(CAT_BOX)])])],
        original_label_config,
    )
    (cat,) = good["result"]
    assert_same_mask(brush_mask(cat), engine(mobile_sam_model, embedding, CAT_BOX)[0])
    assert missing_image == []
    log = caplog.text
    assert "rotated rectangle turned 'person' skipped" in log
    assert "rectangle unknown-label 'dog' skipped: label 'dog' is not in" in log
    assert "task 2: no masks from its boxes" in log


def test_time_budget_leaves_the_rest_for_a_rerun(make_client, original_label_config, image_ref):
    client = make_client(outputs=OutputOptions(mask=True), boxes_seconds=0.0)
    tasks = [make_task(image_ref, tid=i, annotations=[annotation([rect(CAT_BOX)])]) for i in (1, 2)]
    first, second = retrieve(client, tasks, original_label_config)
    assert first["result"] and second == []


@pytest.mark.parametrize(
    "extra",
    [
        {"annotations": 5, "predictions": "x"},
        {"annotations": [{"result": "x"}, 3], "predictions": [{"result": [{"type": "rectanglelabels"}]}]},
        {"annotations": [annotation([{"type": "rectanglelabels", "to_name": "image", "value": None}])]},
        {"annotations": [annotation([{**rect(CAT_BOX), "value": {**rect(CAT_BOX)["value"], "width": "wide"}}])]},
        {"annotations": [annotation([{**rect(CAT_BOX), "to_name": "elsewhere"}])]},
    ],
    ids=["not-lists", "no-regions", "no-value", "bad-width", "unknown-image"],
)
def test_malformed_tasks_get_no_prediction_not_an_error(make_client, original_label_config, image_ref, extra):
    client = make_client(outputs=OutputOptions(mask=True), prefetch=False)
    assert retrieve(client, [{**make_task(image_ref), **extra}], original_label_config) == [[]]


@pytest.mark.parametrize(
    ("env", "flags", "expected"),
    [(None, [], True), ("false", [], False), ("false", ["--boxes-to-masks"], True),
     (None, ["--no-boxes-to-masks"], False)],
)
def test_serve_option_and_its_environment_variable(monkeypatch, env, flags, expected):
    from label_anything.cli.parser import build_parser
    from label_anything.cli.serve import _serve_options

    if env is None:
        monkeypatch.delenv("LABEL_ANYTHING_BOXES_TO_MASKS", raising=False)
    else:
        monkeypatch.setenv("LABEL_ANYTHING_BOXES_TO_MASKS", env)
    args = build_parser().parse_args(["serve", *flags])
    assert _serve_options(args).boxes_to_masks is expected
