"""SAM 3 in the real Label Studio UI: a project with the config ``up --model-name sam3`` writes, our SAM 3 backend
(random weights, CPU) connected; in a task, Auto-Annotation on, type "cat" in the concept TextArea and press Enter
→ Label Studio posts the TextArea's result to ``interactive-annotating`` → every instance comes back as
suggestions (a brush and a box each) → accept → Submit → the annotation holds them.

Chelsea is uploaded as a PNG: the backend's cache already holds the embedding of those pixels, so nothing is
encoded. Random weights give meaningless masks; what is checked is the path, the counts and the masks' bytes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from label_anything.app.up import project_config
from label_anything.labelstudio.results import answer_of
from label_anything.labelstudio.rle import brush_rle_decode

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
W, H = 451, 300
LABELS = ["cat", "dog"]

# The open annotation's suggestions and regions, as the editor holds them (type, id)
_STORE_JS = """() => {
  const a = window.Htx && window.Htx.annotationStore && window.Htx.annotationStore.selected;
  if (!a) return null;
  const items = (m) => Array.from(m.values()).map((r) => [r.type, r.id]);
  return {suggestions: items(a.suggestions), areas: items(a.areas)};
}"""


def _annotations(client, task_id: int, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = client.call("GET", f"/api/tasks/{task_id}/annotations")
        if found:
            return found
        time.sleep(0.5)
    return []


def _canvas_pixels(page) -> np.ndarray:
    """The image canvas (the largest canvas on the page) as RGB pixels of the image's size."""
    import io

    from PIL import Image

    boxes = [c.bounding_box() for c in page.locator("canvas").all()]
    box = max((b for b in boxes if b), key=lambda b: b["width"] * b["height"])
    shot = page.screenshot(clip={k: box[k] for k in ("x", "y", "width", "height")})
    return np.asarray(Image.open(io.BytesIO(shot)).convert("RGB").resize((W, H))).astype(int)


def _brush(region) -> np.ndarray:
    return brush_rle_decode(region["value"]["rle"], region["original_height"], region["original_width"])


@pytest.fixture(scope="module")
def sam3_task(session, sam3_backend, chelsea, tmp_path_factory):
    """(project, task) of a SAM 3 project on ``session``'s Label Studio, chelsea uploaded as a PNG."""
    from PIL import Image

    client = session.client
    project = client.create_project("sam3 in the browser", project_config(LABELS, "sam3"))
    photo = tmp_path_factory.mktemp("sam3-ui") / "chelsea concept.png"
    Image.fromarray(chelsea).save(photo)  # lossless: the pixels of the cached embedding
    client.import_file(project["id"], photo, "image/png")
    (task,) = client.tasks(project["id"])
    ml = client.add_backend(project["id"], sam3_backend.url)
    assert ml.get("readable_state") == "Connected", ml
    return project, task


def test_typed_concept_gives_every_instance_as_suggestions(session, page, sam3_task, sam3_backend):
    project, task = sam3_task
    sent: list[dict] = []
    page.on("request", lambda r: sent.append(r.post_data_json) if "interactive-annotating" in r.url else None)
    page.goto(f"{session.url}/projects/{project['id']}/data?task={task['id']}")
    page.get_by_text("Auto-Annotation").wait_for()
    page.wait_for_timeout(3000)  # the editor finishes loading the image
    page.get_by_text("Auto-Annotation").click()
    concept = page.locator('input[name="concept"]')  # rows="1": the TextArea renders as an <input>
    concept.fill("cat")
    before = _canvas_pixels(page)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "sam3-concept-typed.png"))
    t0 = time.perf_counter()
    with page.expect_response(lambda r: "interactive-annotating" in r.url) as response:
        concept.press("Enter")
    answer = response.value.json()
    elapsed = time.perf_counter() - t0

    # (i) what the UI sends: the TextArea's result alone, its rows so far, no size and no label
    body = response.value.request.post_data_json
    (region,) = body["context"]["result"]
    assert body["task"] == task["id"]
    assert {k: v for k, v in region.items() if k != "id"} == {
        "value": {"text": ["cat"]},
        "from_name": "concept",
        "to_name": "image",
        "type": "textarea",
        "origin": "manual",
    }
    result = answer.get("data", answer)["result"]
    masks = [r for r in result if r["type"] == "brushlabels"]
    instances = {answer_of(r["id"]) for r in result}
    assert len(masks) >= 5 and len(instances) == len(masks) and None not in instances
    assert {r["value"]["brushlabels"][0] for r in masks} == {"cat"}

    # (ii) the answer shows as suggestions: one brush and one box per instance
    page.locator(".lsf-auto-accept__info").wait_for()
    assert page.locator(".lsf-auto-accept__info").inner_text().strip() == f"{len(result)} suggestions"
    store = page.evaluate(_STORE_JS)
    suggested = [(kind, rid.split("#")[0]) for kind, rid in store["suggestions"]]
    assert sorted(suggested) == sorted(
        ({"brushlabels": "brushregion", "rectanglelabels": "rectangleregion"}[r["type"]], r["id"]) for r in result
    )
    page.wait_for_timeout(1000)  # the brushes are drawn
    page.screenshot(path=str(ARTIFACTS / "sam3-concept-suggestions.png"))
    # on the canvas: the suggested brushes tint the photo where their masks are
    union = np.logical_or.reduce([_brush(r) for r in masks])
    changed = np.abs(_canvas_pixels(page) - before).sum(axis=-1) > 30
    assert union.any() and changed[union].mean() > 0.8, f"only {changed[union].mean():.0%} of the masks is tinted"

    page.locator("button.lsf-auto-accept__action_type_accept").click()
    areas = page.evaluate(_STORE_JS)["areas"]
    counts = {kind: sum(k == kind for k, _ in areas) for kind in ("brushregion", "rectangleregion")}
    assert counts == {"brushregion": len(masks), "rectangleregion": len(masks)}
    page.evaluate("() => window.Htx.annotationStore.selected.unselectAreas()")
    page.mouse.move(5, 5)
    page.wait_for_timeout(1000)
    page.screenshot(path=str(ARTIFACTS / "sam3-concept-accepted.png"))
    page.get_by_role("button", name="Submit").click()
    (annotation,) = _annotations(session.client, task["id"])

    saved = annotation["result"]
    (text,) = [r for r in saved if r["type"] == "textarea"]
    assert text["from_name"] == "concept" and text["value"]["text"] == ["cat"]
    saved_masks = {r["id"]: r for r in saved if r["type"] == "brushlabels"}
    assert len([r for r in saved if r["type"] == "rectanglelabels"]) == len(masks)
    assert saved_masks.keys() == {r["id"] for r in masks}  # the backend's ids, the editor's "#..." suffix gone
    for region in masks:
        kept = saved_masks[region["id"]]
        assert kept["value"]["brushlabels"] == ["cat"]
        np.testing.assert_array_equal(_brush(kept), _brush(region))
    (ARTIFACTS / "sam3-ui-interactive-requests.json").write_text(json.dumps(sent, indent=1))
    print(
        f"\n[SAM 3 random weights, CPU, in the browser] typed 'cat' → {len(masks)} suggestions in {elapsed:.1f} s; "
        f"later interactive calls: {[r['context'] for r in sent[1:]]}"
    )
    assert "Traceback" not in sam3_backend.log.read_text()
