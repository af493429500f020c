"""The whole flow in the real Label Studio UI: ``up`` → log in → smart click/box on the cat → accept →
submit → export through the API → ``label-anything convert --to coco-rle`` → one ``cat`` mask on the cat.

Uses the ``classical`` engine: it segments real objects without weights, so "on the cat" is checkable
(a random-weight SAM gives meaningless masks).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.integration]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
W, H = 451, 300
# Where Chelsea's face is in skimage.data.chelsea() (measured): the mask must lie there, not in the
# blurred background strip on the right.
CAT_FACE = (130, 30, 380, 300)  # x0, y0, x1, y1 pixels
CLICK = (270, 150)  # between the eyes
BOX = (140, 30, 370, 290)


def _canvas_box(page) -> dict:
    """Bounding box of the image canvas: the largest canvas (the img elements include thumbnails)."""
    boxes = [c.bounding_box() for c in page.locator("canvas").all()]
    return max((b for b in boxes if b), key=lambda b: b["width"] * b["height"])


def _to_page(box: dict, x: float, y: float) -> tuple[float, float]:
    return box["x"] + x * box["width"] / W, box["y"] + y * box["height"] / H


def _annotations(session, task_id: int, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = session.client.call("GET", f"/api/tasks/{task_id}/annotations")
        if found:
            return found
        time.sleep(0.5)
    return []


@pytest.mark.parametrize("tool", ["keypoint", "rectangle"])
def test_smart_tool_to_coco(session, page, tool, tmp_path):
    image_name = f"chelsea-{tool}.jpg"
    (task,) = [t for t in session.client.tasks(session.project_id) if t["data"]["image"].endswith(image_name)]
    page.goto(f"{session.url}/projects/{session.project_id}/data?task={task['id']}")
    page.get_by_text("Auto-Annotation").wait_for()
    page.wait_for_timeout(3000)  # the editor finishes loading the image
    page.get_by_text("Auto-Annotation").click()
    page.get_by_role("button").filter(has_text="Auto-Detect").first.click()
    aria = "key-point-tool" if tool == "keypoint" else "rectangle-tool"
    page.locator(f"button.lsf-tool_smart[aria-label='{aria}']").click()
    # label chips come in rows, one per control: KeyPointLabels first, RectangleLabels second
    page.get_by_text("cat", exact=True).nth(0 if tool == "keypoint" else 1).click()
    box = _canvas_box(page)
    with page.expect_request(lambda r: "interactive-annotating" in r.url) as request:
        if tool == "keypoint":
            page.mouse.click(*_to_page(box, *CLICK))
        else:
            page.mouse.move(*_to_page(box, BOX[0], BOX[1]))
            page.mouse.down()
            page.mouse.move(*_to_page(box, BOX[2], BOX[3]), steps=10)
            page.mouse.up()
    sent = request.value.post_data_json["context"]["result"]
    assert [r["type"] for r in sent] == [f"{aria.split('-tool')[0].replace('-', '')}labels"]
    page.locator(".lsf-auto-accept__info").wait_for()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"browser-{tool}-suggestion.png"))
    page.locator("button.lsf-auto-accept__action_type_accept").click()
    page.get_by_role("button", name="Submit").click()
    (annotation,) = _annotations(session, task["id"])
    page.screenshot(path=str(ARTIFACTS / f"browser-{tool}-submitted.png"))
    assert "brushlabels" in {r["type"] for r in annotation["result"]}

    export = session.client.call("GET", f"/api/projects/{session.project_id}/export", params={"exportType": "JSON"})
    export_file = tmp_path / "export.json"
    export_file.write_text(json.dumps([t for t in export if t["id"] == task["id"]]))
    out = tmp_path / "coco"
    done = subprocess.run(
        [sys.executable, "-m", "label_anything", "convert", str(export_file), "--to", "coco-rle", "--out", str(out),
         "--images-root", str(session.images), "--no-progress"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    check_coco(out, tool)


def check_coco(out: Path, tool: str) -> None:
    """One ``cat`` annotation whose RLE mask lies on Chelsea's face."""
    from pycocotools import mask as mask_utils

    coco = json.loads((out / "annotations" / "ann.json").read_text())
    (ARTIFACTS / f"browser-{tool}-coco.json").write_text(json.dumps(coco))
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    # masks only: a box-only region (the smart rectangle itself, if kept) would be in boxes.json
    (ann,) = coco["annotations"]
    assert cats[ann["category_id"]] == "cat"
    segmentation = ann["segmentation"]
    if isinstance(segmentation["counts"], str):
        segmentation = {**segmentation, "counts": segmentation["counts"].encode()}
    mask = mask_utils.decode(segmentation).astype(bool)
    assert mask.shape == (H, W)
    ys, xs = np.nonzero(mask)
    assert len(xs) >= 50, "the mask is (nearly) empty"
    x0, y0, x1, y1 = CAT_FACE
    inside = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    assert inside.mean() >= 0.95, f"only {inside.mean():.0%} of the mask is on the cat's face"
    assert xs.mean() > W * 0.4, "the mask is not on the cat side of the image"


BITMASK_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <KeyPointLabels name="KeyPointLabels" toName="image"><Label value="cat" smart="true"/></KeyPointLabels>
  <BitmaskLabels name="BitmaskLabels" toName="image"><Label value="cat" background="#ff0000"/></BitmaskLabels>
</View>"""

# The editor's bitmask regions of the open annotation: their canvas size, the box the editor found in the
# decoded PNG's alpha (canvas pixels, x stageZoom), and the PNG the editor itself writes for them.
_REGIONS_JS = """(reencode) => {
  const annotation = window.Htx && window.Htx.annotationStore && window.Htx.annotationStore.selected;
  if (!annotation) return null;
  return Array.from(annotation.areas.values()).map((r) => {
    if (reencode && r.updateImageURL) r.updateImageURL();
    const canvas = r.offscreenCanvasRef;
    return {type: r.type, bbox: r.bbox ? {...r.bbox} : null, zoom: r.parent ? r.parent.stageZoom : null,
            width: canvas ? canvas.width : null, height: canvas ? canvas.height : null,
            url: reencode ? r.imageDataURL : null};
  });
}"""


def _canvas_pixels(page, box: dict) -> np.ndarray:
    from PIL import Image

    shot = page.screenshot(clip={k: box[k] for k in ("x", "y", "width", "height")})
    return np.asarray(Image.open(io.BytesIO(shot)).convert("RGB").resize((W, H))).astype(int)


def test_bitmask_answer_is_shown_as_a_region(session, page, chelsea, tmp_path):
    """A label config with BitmaskLabels: the smart click's answer is a bitmask that the editor decodes (its
    canvas is the image's size, its box is the mask's), tints on the photo, writes back as the same pixels,
    and saves; the export converts to the same mask."""
    from PIL import Image

    from label_anything.labelstudio.bitmask import bitmask_decode

    client = session.client
    photo = tmp_path / "chelsea-bitmask.jpg"
    Image.fromarray(chelsea).save(photo, quality=95)
    project = client.create_project("bitmask in the browser", BITMASK_CONFIG)
    client.import_file(project["id"], photo)
    (task,) = client.tasks(project["id"])
    (backend,) = client.ml_backends(session.project_id)  # the backend `up` started
    assert client.add_backend(project["id"], backend["url"]).get("readable_state") == "Connected"

    page.goto(f"{session.url}/projects/{project['id']}/data?task={task['id']}")
    page.get_by_text("Auto-Annotation").wait_for()
    page.wait_for_timeout(3000)
    box = _canvas_box(page)
    before = _canvas_pixels(page, box)
    page.get_by_text("Auto-Annotation").click()
    page.get_by_role("button").filter(has_text="Auto-Detect").first.click()
    page.locator("button.lsf-tool_smart[aria-label='key-point-tool']").click()
    page.get_by_text("cat", exact=True).nth(0).click()
    with page.expect_response(lambda r: "interactive-annotating" in r.url) as response:
        page.mouse.click(*_to_page(box, *CLICK))
    answer = response.value.json()
    (region,) = [r for r in answer.get("data", answer)["result"] if r["type"] == "bitmasklabels"]
    mask = bitmask_decode(region["value"]["imageDataURL"], H, W)
    assert mask.sum() >= 50
    page.locator(".lsf-auto-accept__info").wait_for()
    page.locator("button.lsf-auto-accept__action_type_accept").click()

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        shown = page.evaluate(_REGIONS_JS, False) or []
        if shown and all(r["bbox"] for r in shown):
            break
        page.wait_for_timeout(250)
    (shown,) = shown
    assert shown["type"] == "bitmaskregion" and (shown["width"], shown["height"]) == (W, H)
    ys, xs = np.nonzero(mask)
    found = [shown["bbox"][k] / shown["zoom"] for k in ("left", "top", "right", "bottom")]
    np.testing.assert_allclose(found, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=1e-6)

    page.evaluate("() => window.Htx.annotationStore.selected.unselectAreas()")  # no highlight over the photo
    page.mouse.move(5, 5)
    page.wait_for_timeout(1000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-bitmask-accepted.png"))
    after = _canvas_pixels(page, box)
    changed = np.abs(after - before).sum(axis=-1) > 30
    from scipy import ndimage

    inside, outside = ndimage.binary_erosion(mask, iterations=3), ~ndimage.binary_dilation(mask, iterations=3)
    assert changed[inside].mean() > 0.8, f"only {changed[inside].mean():.0%} of the mask is tinted"
    assert changed[outside].mean() < 0.1, f"{changed[outside].mean():.0%} of the photo outside the mask changed"

    (rewritten,) = page.evaluate(_REGIONS_JS, True)  # the editor's own PNG of the region
    assert rewritten["url"].startswith("data:image/png;base64,") and rewritten["url"] != region["value"]["imageDataURL"]
    np.testing.assert_array_equal(bitmask_decode(rewritten["url"], H, W), mask)
    page.get_by_role("button", name="Submit").click()
    (annotation,) = _annotations(session, task["id"])
    (saved,) = [r for r in annotation["result"] if r["type"] == "bitmasklabels"]
    assert saved["value"]["bitmasklabels"] == ["cat"]
    np.testing.assert_array_equal(bitmask_decode(saved["value"]["imageDataURL"], H, W), mask)

    export = client.call("GET", f"/api/projects/{project['id']}/export", params={"exportType": "JSON"})
    export_file = tmp_path / "export.json"
    export_file.write_text(json.dumps(export))
    out = tmp_path / "coco"
    env = {"PATH": "/usr/bin:/bin", "LABEL_STUDIO_URL": session.url, "LABEL_STUDIO_API_KEY": client.token}
    done = subprocess.run([sys.executable, "-m", "label_anything", "convert", str(export_file), "--to", "coco-rle",
                           "--out", str(out), "--no-progress"], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    from pycocotools import mask as coco_mask

    (ann,) = json.loads((out / "annotations" / "ann.json").read_text())["annotations"]
    seg = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
    np.testing.assert_array_equal(coco_mask.decode(seg).astype(bool), mask)
