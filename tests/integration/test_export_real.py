"""A real Label Studio 1.23.2 export → ``label-anything convert`` → pycocotools.

The annotation is built from the backend's suggestion (brush + box), saved through Label Studio's API,
exported as JSON, and converted. Label Studio keeps the region ids of the suggestion, which mark the brush
and the box as one answer, so they convert to one object. Label Studio's own COCO export of the same project
must agree on the boxes; the masks must be exactly the brush masks Label Studio stored.

A second project has a ``BitmaskLabels`` control instead of ``BrushLabels``: the same backend answers it with a
bitmask (a PNG data URL) of the brush's pixels, Label Studio stores and exports it as sent, and ``convert``
reads it pixel for pixel.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from label_anything.labelstudio.bitmask import bitmask_decode
from label_anything.labelstudio.results import answer_of
from label_anything.labelstudio.rle import brush_rle_decode

pytestmark = pytest.mark.integration


def ok(response, status=(200, 201)):
    assert response.status_code in status, f"{response.request.method} {response.request.url}: {response.text}"
    return response


def keypoint(x: float, y: float, w: int, h: int) -> dict:
    return {
        "original_width": w, "original_height": h, "image_rotation": 0, "id": "kp1",
        "value": {"x": x * 100 / w, "y": y * 100 / h, "width": 0.5, "keypointlabels": ["cat"]},
        "is_positive": True, "from_name": "KeyPointLabels", "to_name": "image", "type": "keypointlabels",
    }


@pytest.fixture(scope="module")
def labelled_project(label_studio, start_backend, original_label_config, chelsea_jpeg, tmp_path_factory):
    """A project with two uploaded photos: Chelsea annotated from a suggestion, coffee left unlabelled."""
    import skimage.data

    api = label_studio.api
    proj = ok(api.post("/api/projects", json={"title": "export it", "label_config": original_label_config})).json()
    coffee = tmp_path_factory.mktemp("coffee") / "coffee.png"
    Image.fromarray(skimage.data.coffee()).save(coffee)
    for path, mime in ((chelsea_jpeg, "image/jpeg"), (coffee, "image/png")):
        with open(path, "rb") as f:
            ok(api.post(f"/api/projects/{proj['id']}/import", files={"file": (path.name, f, mime)}))
    tasks = ok(api.get("/api/tasks", params={"project": proj["id"]})).json()["tasks"]
    (cat_task,) = [t for t in tasks if "chelsea" in t["data"]["image"]]
    backend = start_backend("--out-bbox")
    ml = ok(api.post("/api/ml", json={"url": backend.url, "project": proj["id"], "is_interactive": True})).json()
    body = {"task": cat_task["id"], "context": {"result": [keypoint(200, 120, 451, 300)]}}
    answer = ok(api.post(f"/api/ml/{ml['id']}/interactive-annotating", json=body)).json()
    result = answer.get("data", answer)["result"]
    assert {r["type"] for r in result} == {"brushlabels", "rectanglelabels"}
    ok(api.post(f"/api/tasks/{cat_task['id']}/annotations", json={"result": result}))
    return proj, cat_task, result


def test_real_export_converts_exactly(label_studio, labelled_project, tmp_path):
    from pycocotools.coco import COCO

    proj, cat_task, suggestion = labelled_project
    api = label_studio.api
    params = {"exportType": "JSON", "download_all_tasks": "true"}  # unlabelled tasks too
    exported = ok(api.get(f"/api/projects/{proj['id']}/export", params=params)).json()
    export_file = tmp_path / "export.json"
    export_file.write_text(json.dumps(exported, ensure_ascii=False))
    out = tmp_path / "dataset"
    env = {**os.environ, "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token}
    proc = subprocess.run(
        [sys.executable, "-m", "label_anything", "convert", str(export_file), "--to", "coco-rle", "--out", str(out),
         "--no-progress"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "cat" in proc.stdout  # the class list, ready to paste

    coco = COCO(str(out / "annotations" / "ann.json"))
    assert len(coco.getImgIds()) == 2  # the unlabelled photo stays, without annotations
    (img_id,) = [i for i, im in coco.imgs.items() if "chelsea" in im["file_name"]]
    image = coco.imgs[img_id]
    assert (image["width"], image["height"]) == (451, 300)
    assert "café" in image["file_name"]
    assert (out / "images" / image["file_name"]).is_file()
    assert np.asarray(Image.open(out / "images" / image["file_name"])).shape == (300, 451, 3)

    (entry,) = [t for t in exported if t["id"] == cat_task["id"]]
    stored = {r["type"]: r for r in entry["annotations"][0]["result"]}
    # Label Studio keeps the suggestion's region ids: they say that the brush and the box are one answer.
    assert {r["id"] for r in stored.values()} == {r["id"] for r in suggestion}
    assert len({answer_of(r["id"]) for r in stored.values()} - {None}) == 1
    brush = brush_rle_decode(stored["brushlabels"]["value"]["rle"], 300, 451)
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_id]))
    # The suggestion's brush and its box are one object: the box is merged into the mask's annotation.
    (mask_ann,) = anns
    assert "1 × box of a smart-click answer that has a mask (one object)" in proc.stdout
    assert not (out / "annotations" / "boxes.json").exists()
    np.testing.assert_array_equal(coco.annToMask(mask_ann).astype(bool), brush)
    assert mask_ann["area"] == int(brush.sum())
    ys, xs = np.nonzero(brush)
    tight = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    np.testing.assert_allclose(mask_ann["bbox"], tight, atol=1e-6)
    box = stored["rectanglelabels"]["value"]
    suggested = [box["x"] * 4.51, box["y"] * 3.0, box["width"] * 4.51, box["height"] * 3.0]
    np.testing.assert_allclose(suggested, tight, atol=1e-3)  # the suggested box is the mask's box
    assert coco.cats[mask_ann["category_id"]]["name"] == "cat"

    # Label Studio's own COCO export of the same project agrees on the box.
    response = ok(api.get(f"/api/projects/{proj['id']}/export", params={"exportType": "COCO"}))
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".json")]
        theirs = json.loads(archive.read(name))
    their_boxes = [a["bbox"] for a in theirs["annotations"]]
    assert any(np.allclose(b, tight, atol=1e-2) for b in their_boxes), (their_boxes, tight)



BITMASK_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <KeyPointLabels name="KeyPointLabels" toName="image"><Label value="cat" smart="true"/></KeyPointLabels>
  <RectangleLabels name="RectangleLabels" toName="image"><Label value="cat"/></RectangleLabels>
  <BitmaskLabels name="BitmaskLabels" toName="image"><Label value="cat"/></BitmaskLabels>
</View>"""


def test_real_bitmask_is_stored_exported_and_converted(label_studio, labelled_project, chelsea_jpeg, tmp_path):
    from pycocotools import mask as coco_mask

    brush_project, _, brush_suggestion = labelled_project
    api = label_studio.api
    (backend,) = ok(api.get("/api/ml", params={"project": brush_project["id"]})).json()  # one process for both
    proj = ok(api.post("/api/projects", json={"title": "bitmask", "label_config": BITMASK_CONFIG})).json()
    with open(chelsea_jpeg, "rb") as f:
        ok(api.post(f"/api/projects/{proj['id']}/import", files={"file": (chelsea_jpeg.name, f, "image/jpeg")}))
    (task,) = ok(api.get("/api/tasks", params={"project": proj["id"]})).json()["tasks"]
    ml = ok(api.post("/api/ml", json={"url": backend["url"], "project": proj["id"], "is_interactive": True})).json()
    body = {"task": task["id"], "context": {"result": [keypoint(200, 120, 451, 300)]}}
    answer = ok(api.post(f"/api/ml/{ml['id']}/interactive-annotating", json=body)).json()
    suggestion = answer.get("data", answer)["result"]
    by_type = {r["type"]: r for r in suggestion}
    assert by_type.keys() == {"bitmasklabels", "rectanglelabels"}
    sent = by_type["bitmasklabels"]
    assert sent["from_name"] == "BitmaskLabels" and sent["id"].endswith("-bitmask")
    bits = bitmask_decode(sent["value"]["imageDataURL"], 300, 451)
    (brush_region,) = [r for r in brush_suggestion if r["type"] == "brushlabels"]
    brush = brush_rle_decode(brush_region["value"]["rle"], 300, 451)
    # the same click on the same photo: the brush's pixels (up to the float noise of a decoder run, see
    # tests/test_server.py; the unit tests show the encodings equal for one mask)
    assert brush.any() and np.count_nonzero(bits != brush) <= 10

    ok(api.post(f"/api/tasks/{task['id']}/annotations", json={"result": suggestion}))
    exported = ok(api.get(f"/api/projects/{proj['id']}/export", params={"exportType": "JSON"})).json()
    (entry,) = exported
    stored = {r["type"]: r for r in entry["annotations"][0]["result"]}
    assert stored.keys() == {"bitmasklabels", "rectanglelabels"}
    assert stored["bitmasklabels"]["value"] == sent["value"]  # kept as sent: the PNG, byte for byte
    assert stored["bitmasklabels"]["id"] == sent["id"]
    assert (stored["bitmasklabels"]["original_width"], stored["bitmasklabels"]["original_height"]) == (451, 300)

    export_file = tmp_path / "export.json"
    export_file.write_text(json.dumps(exported, ensure_ascii=False))
    env = {**os.environ, "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token}
    for fmt in ("coco-rle", "yolo-seg"):
        out = tmp_path / fmt
        proc = subprocess.run(
            [sys.executable, "-m", "label_anything", "convert", str(export_file), "--to", fmt, "--out", str(out),
             "--no-progress"],
            capture_output=True, text=True, env=env, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        assert "not converted" not in proc.stdout, proc.stdout
        assert "1 × box of a smart-click answer that has a mask (one object)" in proc.stdout
    (ann,) = json.loads((tmp_path / "coco-rle" / "annotations" / "ann.json").read_text())["annotations"]
    seg = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
    np.testing.assert_array_equal(coco_mask.decode(seg).astype(bool), bits)
    assert ann["area"] == int(bits.sum())
    (label_file,) = (tmp_path / "yolo-seg" / "labels").glob("*.txt")
    assert len(label_file.read_text().splitlines()) == 1
