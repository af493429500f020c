"""Boxes to masks against a real Label Studio 1.23.2: "Retrieve predictions" (run through Label Studio's own
data-manager API, as the button does) on tasks holding rectangles stores a brush mask per rectangle; tasks with
nothing to suggest get no (empty) prediction; ``import-coco --project`` creates tasks with their predictions.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from label_anything.cli.parser import main
from label_anything.engine import Prompt, decode, encode
from label_anything.engine.cache import to_storage_dtype
from label_anything.geometry.masks import mask_to_coco_rle
from label_anything.imaging.decode import read_image

pytestmark = pytest.mark.integration

H, W = 300, 451
CAT_BOX = (120, 20, 400, 290)


def ok(response, status=(200, 201)):
    assert response.status_code in status, f"{response.request.method} {response.request.url}: {response.text}"
    return response.json()


def rect(box, label="cat", from_name="RectangleLabels") -> dict:
    x0, y0, x1, y1 = box
    return {
        "id": "box1",
        "from_name": from_name,
        "to_name": "image",
        "type": "rectanglelabels",
        "original_width": W,
        "original_height": H,
        "image_rotation": 0,
        "value": {"x": x0 * 100 / W, "y": y0 * 100 / H, "width": (x1 - x0) * 100 / W,
                  "height": (y1 - y0) * 100 / H, "rotation": 0, "rectanglelabels": [label]},
    }


def brush(region) -> np.ndarray:
    from label_studio_sdk.converter.brush import decode_rle

    h, w = region["original_height"], region["original_width"]
    return np.reshape(decode_rle(region["value"]["rle"]), (h, w, 4))[:, :, 3] > 0


def engine_mask(model, image, box) -> np.ndarray:
    """The engine's mask for ``box``, from the float16-stored embedding the server's cache keeps."""
    return decode(model, to_storage_dtype(encode(model, image)), Prompt.from_lists(box=box)).best()[0]


def retrieve_predictions(label_studio, project_id) -> dict:
    """What the "Retrieve predictions" action of the data manager does, on every task of the project."""
    return ok(label_studio.api.post("/api/dm/actions", params={"id": "retrieve_tasks_predictions",
                                                              "project": project_id},
                                    json={"selectedItems": {"all": True, "excluded": []}}))


def predictions(label_studio, task_id) -> list[dict]:
    return ok(label_studio.api.get("/api/predictions", params={"task": task_id}))


@pytest.fixture(scope="module")
def backend(start_backend):
    return start_backend()  # defaults: brush mask only, --boxes-to-masks on


def test_retrieve_predictions_turns_rectangle_annotations_into_masks(
    label_studio, backend, original_label_config, chelsea_jpeg, mobile_sam_model
):
    client = label_studio.client
    project = client.create_project("boxes to masks", original_label_config)
    client.import_file(project["id"], chelsea_jpeg)
    client.import_file(project["id"], chelsea_jpeg)
    boxed, bare = client.tasks(project["id"])
    ok(label_studio.api.post(f"/api/tasks/{boxed['id']}/annotations", json={"result": [rect(CAT_BOX)]}))
    ml = client.add_backend(project["id"], backend.url)
    assert ml.get("readable_state") == "Connected", ml

    retrieve_predictions(label_studio, project["id"])

    (stored,) = predictions(label_studio, boxed["id"])
    assert stored["model_version"] == mobile_sam_model.info.model_id
    (region,) = stored["result"]
    assert region["type"] == "brushlabels" and region["from_name"] == "BrushLabels"
    assert region["value"]["brushlabels"] == ["cat"]
    expected = engine_mask(mobile_sam_model, read_image(chelsea_jpeg), CAT_BOX)
    assert expected.any() and np.count_nonzero(brush(region) != expected) <= 10  # float noise, as in test_server
    assert stored["score"] == pytest.approx(region["score"], abs=1e-5)  # one mask: the mean is its score
    # nothing to suggest: no empty "<model> 0.00%" prediction stored, and opening the task asks again
    assert predictions(label_studio, bare["id"]) == []
    ok(label_studio.api.get(f"/api/tasks/{bare['id']}"))
    assert predictions(label_studio, bare["id"]) == []
    assert "Traceback" not in backend.log.read_text()


def test_import_coco_into_a_project_then_masks_from_its_boxes(
    label_studio, backend, original_label_config, chelsea, chelsea_jpeg, mobile_sam_model, tmp_path, capsys
):
    folder = label_studio.document_root / "coco set"
    folder.mkdir()
    shutil.copy(chelsea_jpeg, folder / "chelsea ü.jpg")
    Image.fromarray(chelsea[:100, :120]).save(folder / "unlabelled.png")
    cat_mask = np.zeros((H, W), bool)
    cat_mask[40:250, 150:380] = True
    rle = mask_to_coco_rle(cat_mask)
    rle = {**rle, "counts": rle["counts"].decode() if isinstance(rle["counts"], bytes) else rle["counts"]}
    coco = {
        "images": [{"id": 1, "file_name": "chelsea ü.jpg", "width": W, "height": H},
                   {"id": 2, "file_name": "unlabelled.png", "width": 120, "height": 100}],
        "categories": [{"id": 3, "name": "cat"}],
        "annotations": [{"id": 9, "image_id": 1, "category_id": 3, "bbox": [150, 40, 230, 210],
                         "segmentation": rle, "area": int(cat_mask.sum()), "iscrowd": 0, "mask_score": 0.9}],
    }
    coco_path = tmp_path / "instances.json"
    coco_path.write_text(json.dumps(coco))
    project = label_studio.client.create_project("coco review", original_label_config)
    args = ["import-coco", str(coco_path), "--images", str(folder), "--local-files-root",
            str(label_studio.document_root), "--label-studio-url", label_studio.url]

    assert main([*args, "--project", "coco review", "--label-studio-api-key", "not-a-token"]) == 2
    assert "refused the API key (HTTP 401)" in capsys.readouterr().err
    assert main([*args, "--project", "no such project", "--label-studio-api-key", label_studio.token]) == 2
    assert "has no project with id or title 'no such project'" in capsys.readouterr().err
    assert label_studio.client.tasks(project["id"]) == []
    assert main([*args, "--project", "coco review", "--label-studio-api-key", label_studio.token]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["project"] == project["id"] and summary["task_count"] == 2 and summary["prediction_count"] == 1

    tasks = label_studio.client.tasks(project["id"])
    assert sorted(t["data"]["image"] for t in tasks) == [
        "/data/local-files/?d=coco%20set/chelsea%20%C3%BC.jpg", "/data/local-files/?d=coco%20set/unlabelled.png"]
    labelled = next(t for t in tasks if t["data"]["coco_image_id"] == 1)
    unlabelled = next(t for t in tasks if t["data"]["coco_image_id"] == 2)
    (imported,) = predictions(label_studio, labelled["id"])
    kinds = {r["type"]: r for r in imported["result"]}
    assert kinds.keys() == {"rectanglelabels", "brushlabels"}
    assert kinds["rectanglelabels"]["from_name"] == "RectangleLabels"  # the project's own control names
    assert kinds["brushlabels"]["from_name"] == "BrushLabels"
    np.testing.assert_array_equal(brush(kinds["brushlabels"]), cat_mask)
    v = kinds["rectanglelabels"]["value"]
    assert [v["x"] * W / 100, v["y"] * H / 100, v["width"] * W / 100, v["height"] * H / 100] == pytest.approx(
        [150, 40, 230, 210])
    assert predictions(label_studio, unlabelled["id"]) == []
    # Label Studio serves the images (the command added a local-files storage for the folder)
    image = label_studio.api.get("/data/local-files/", params={"d": "coco set/chelsea ü.jpg"})
    assert image.status_code == 200 and image.content == chelsea_jpeg.read_bytes()

    # the imported boxes are prompts too: "Retrieve predictions" adds the model's mask of each
    ml = label_studio.client.add_backend(project["id"], backend.url)
    assert ml.get("readable_state") == "Connected", ml
    retrieve_predictions(label_studio, project["id"])
    ours = [p for p in predictions(label_studio, labelled["id"]) if p["model_version"] == ml["model_version"]]
    (region,) = ours[0]["result"]
    assert region["value"]["brushlabels"] == ["cat"]
    expected = engine_mask(mobile_sam_model, read_image(chelsea_jpeg), (150, 40, 380, 250))
    assert np.count_nonzero(brush(region) != expected) <= 10
    assert predictions(label_studio, unlabelled["id"]) == []


def test_precompute_a_project_fills_the_cache_serve_reads(
    label_studio, original_label_config, chelsea_jpeg, random_checkpoint, tmp_path, capsys
):
    """``precompute --project``: every image of a real project's tasks (an upload, fetched from Label Studio
    with the token) is encoded into the disk cache under its pixel digest; a second run encodes nothing."""
    from label_anything.engine.cache import EmbeddingCache, cache_key
    from label_anything.imaging.decode import image_digest

    project = label_studio.client.create_project("precompute me", original_label_config)
    label_studio.client.import_file(project["id"], chelsea_jpeg)
    cache_dir = tmp_path / "cache"
    argv = ["precompute", "--project", str(project["id"]), "--label-studio-url", label_studio.url,
            "--label-studio-api-key", label_studio.token, "--model-name", "mobile_sam",
            "--checkpoint", str(random_checkpoint("mobile_sam", "vit_t")), "--device", "cpu",
            "--cache-dir", str(cache_dir), "--no-progress"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (first["encoded"], first["already_cached"], first["failed"]) == (1, 0, [])
    key = cache_key(first["model"], image_digest(read_image(chelsea_jpeg)))
    stored = EmbeddingCache(disk_dir=cache_dir / "embeddings").get(key)
    assert stored is not None and stored.original_size == (H, W)
    assert main(argv) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (second["encoded"], second["already_cached"]) == (0, 1)
