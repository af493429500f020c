"""SAM 3 concept prompts through the real HTTP backend: a phrase typed in a TextArea, label names as concepts
("Retrieve predictions"), find similar (an exemplar label's rectangle); errors as one-line 4xx JSON.

The SAM 3 cases (``slow``) build the ASGI app in this process around the session's ``sam3_model`` (random
weights, CPU) with chelsea's embedding already in a float32 cache, so no case encodes and the served masks are
the engine's own. Chelsea is served as a PNG: its pixels, hence its digest, are those of the embedding.
"""

from __future__ import annotations

import logging
import time
from urllib.parse import quote

import numpy as np
import pytest

from label_anything.app.concepts import ConceptOptions, merge_instances
from label_anything.app.interactive import ServeOptions
from label_anything.app.up import project_config
from label_anything.engine import Prompt
from label_anything.errors import PromptError
from label_anything.imaging.fetch import ImageFetcher
from label_anything.labelstudio.concepts import MAX_CONCEPT_CHARS, concept_label, label_phrases
from label_anything.labelstudio.config import parse_label_config
from label_anything.labelstudio.context import ContextError
from label_anything.labelstudio.results import OutputOptions, answer_of
from label_anything.labelstudio.rle import brush_rle_decode

H, W = 300, 451
LABELS = ["cat", "person"]
CONFIG = project_config(LABELS, "sam3")  # what `up --model-name sam3` gives the project
THRESHOLD = 0.322  # random weights score every instance ~0.32: a few dozen instances on chelsea


def textarea(*rows, **extra):
    """The result Label Studio 1.23 puts in the context when a phrase is submitted in the TextArea (no size,
    no rotation, no label: see labelstudio/concepts.py)."""
    return {"id": "Ta1", "from_name": "concept", "to_name": "image", "type": "textarea", "origin": "manual",
            "value": {"text": list(rows)}, **extra}


def kp(x, y, positive=True, label="cat"):
    return {"original_width": W, "original_height": H, "image_rotation": 0, "id": f"k{x}_{y}",
            "value": {"x": x * 100 / W, "y": y * 100 / H, "width": 0.5, "keypointlabels": [label]},
            "is_positive": positive, "from_name": "KeyPointLabels", "to_name": "image", "type": "keypointlabels"}


def rect(x0, y0, x1, y1, label="cat", rid="r1"):
    return {"original_width": W, "original_height": H, "image_rotation": 0, "id": rid,
            "value": {"x": x0 * 100 / W, "y": y0 * 100 / H, "width": (x1 - x0) * 100 / W,
                      "height": (y1 - y0) * 100 / H, "rotation": 0, "rectanglelabels": [label]},
            "from_name": "RectangleLabels", "to_name": "image", "type": "rectanglelabels"}


def predict(client, task, regions, config=CONFIG):
    body = {"tasks": [task], "project": "1.1700000000", "label_config": config,
            "params": {"login": None, "password": None, "context": {"result": regions}}}
    return client.post("/predict", json=body)


def error_of(response, status=400) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and "Traceback" not in response.text
    assert "\n" not in body["error"]  # one line, as the log shows it
    return body["error"]


# -- no SAM 3 needed -------------------------------------------------------------------------------------
def test_up_sam3_config_has_the_concept_textarea():
    config = parse_label_config(CONFIG)
    assert config.concept_textareas("image") == ("concept",)
    (textarea_control,) = [c for c in config.controls if c.type == "textarea"]
    assert textarea_control.to_names == ("image",) and not textarea_control.per_region
    assert config.output_labels("image") == tuple(LABELS)
    assert 'showSubmitButton="true"' in CONFIG and 'perRegion="false"' in CONFIG
    assert "TextArea" not in project_config(LABELS, "mobile_sam")
    assert parse_label_config(project_config(LABELS, "auto")).concept_textareas("image") == ()


def test_concept_label_rules():
    concepts = {"person": ("person", "pedestrian")}
    assert concept_label("CAT", LABELS, concepts) == ("cat", "CAT")
    assert concept_label("person: man in a red coat", LABELS, concepts) == ("person", "man in a red coat")
    assert concept_label("Person:", LABELS, concepts) == ("person", "person")
    assert concept_label("pedestrian", LABELS, concepts) == ("person", "pedestrian")
    assert concept_label("tabby", ["cat"], {}) == ("cat", "tabby")  # one label: that one
    with pytest.raises(ContextError, match=r"names no label.*labels: cat, person"):
        concept_label("dog", LABELS, concepts)
    with pytest.raises(ContextError, match="names no label"):
        concept_label("dog: husky", LABELS, concepts)
    assert label_phrases("Car", {"car": ("car", "auto")}) == ("car", "auto")
    assert label_phrases("tree", {"tree": ()}) == ()
    from label_anything.engine.concepts import MAX_CONCEPT_CHARS as ENGINE_MAX

    assert ENGINE_MAX == MAX_CONCEPT_CHARS


def test_serve_concept_flags_and_environment(monkeypatch, capsys):
    from label_anything.cli.parser import build_parser
    from label_anything.cli.serve import _serve_options

    options = _serve_options(build_parser().parse_args(["serve"])).concepts
    assert (options.threshold, options.label_concepts, dict(options.concepts)) == (0.5, True, {})
    args = build_parser().parse_args(["serve", "--concept-threshold", "0.3", "--no-label-concepts",
                                      "--concepts", "person=person, pedestrian;car=;"])
    options = _serve_options(args).concepts
    assert options.threshold == 0.3 and options.label_concepts is False
    assert dict(options.concepts) == {"person": ("person", "pedestrian"), "car": ()}
    monkeypatch.setenv("LABEL_ANYTHING_CONCEPT_THRESHOLD", "0.25")
    monkeypatch.setenv("LABEL_ANYTHING_CONCEPTS", "cat=tabby cat")
    args = build_parser().parse_args(["serve"])
    options = _serve_options(args).concepts
    assert options.threshold == 0.25 and dict(options.concepts) == {"cat": ("tabby cat",)}
    # `serve --workers N` hands the options to its workers as JSON: the same options come out
    from label_anything.cli.serve import _options_from_env, _options_to_env

    assert _serve_options(_options_from_env(_options_to_env(args))).concepts == options
    for name, value, words in [("LABEL_ANYTHING_CONCEPT_THRESHOLD", "1.5", "not a score from 0 to 1"),
                               ("LABEL_ANYTHING_CONCEPTS", "cat=a=b", "one '=' per entry")]:
        monkeypatch.setenv(name, value)
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args(["serve"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert name in err and words in err and err.count("\n") == 1
        monkeypatch.delenv(name)


def test_prompt_takes_sam3_logits_size():
    for given, kept in [((1, 288, 288), (1, 288, 288)), ((256, 256), (1, 256, 256)), ((288, 288), (1, 288, 288))]:
        assert Prompt.from_lists([(1, 1)], mask_logits=np.zeros(given, np.float32)).mask_logits.shape == kept
    for shape in [(1, 300, 300), (1, 256, 288), (2, 256, 256)]:
        with pytest.raises(PromptError, match="mask_logits must be"):
            Prompt.from_lists([(1, 1)], mask_logits=np.zeros(shape, np.float32))


def test_merge_instances_drops_a_second_phrases_duplicates():
    from label_anything.engine.concepts import Instances

    a = np.zeros((2, 20, 20), bool)
    a[0, :10, :10] = True
    a[1, 12:, 12:] = True
    b = np.zeros((1, 20, 20), bool)
    b[0, :10, :10] = True
    b[0, 0, :5] = False  # IoU 0.95 with a[0] (above DUPLICATE_IOU): the same object
    found = [Instances(a, np.zeros((2, 4), np.float32), np.array([0.9, 0.4], np.float32)),
             Instances(b, np.zeros((1, 4), np.float32), np.array([0.8], np.float32))]
    merged = merge_instances(found)
    assert [round(s, 3) for _, s in merged] == [0.9, 0.4]
    assert [round(s, 3) for _, s in merge_instances(found[1:])] == [0.8]


@pytest.fixture(scope="module")
def png_dir(chelsea, tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("concept-images")
    Image.fromarray(chelsea).save(folder / "chelsea 1.png")  # lossless: the digest of chelsea's pixels
    return folder


@pytest.fixture(scope="module")
def task(png_dir):
    return {"id": 7, "data": {"image": "/data/local-files/?d=" + quote("chelsea 1.png")}}


@pytest.fixture()
def mobile_client(backend_client, png_dir):
    return backend_client(ImageFetcher(local_files_root=png_dir), ServeOptions())


def test_typed_concept_on_a_model_without_concepts_is_a_400(mobile_client, task, caplog):
    t0 = time.perf_counter()
    error = error_of(predict(mobile_client, task, [textarea("cat")]))
    assert "needs SAM 3 (serve --model-name sam3)" in error and "mobile_sam-vit_t-" in error
    assert time.perf_counter() - t0 < 1.0  # refused before any image is fetched or encoded
    assert len(mobile_client.app.state.backend.cache) == 0
    assert any("needs SAM 3" in r.getMessage() for r in caplog.records)
    # Label Studio sends the image's other classifications beside the TextArea's result: still a typed concept
    choice = {"id": "c1", "from_name": "quality", "to_name": "image", "type": "choices", "origin": "manual",
              "value": {"choices": ["good"]}}
    assert "needs SAM 3" in error_of(predict(mobile_client, task, [choice, textarea("cat")]))
    # an exemplar label's rectangle too
    config = CONFIG.replace('<Label value="cat" background="#e51515" smart="true"/>',
                            '<Label value="cat" background="#e51515" smart="true" exemplar="true"/>')
    assert "find similar" in error_of(predict(mobile_client, task, [rect(120, 20, 400, 290)], config))
    # Label Studio's other answers are unchanged: a label names no concept when the backend does not do them
    body = {"tasks": [task], "project": "1.1", "label_config": CONFIG, "params": {"context": None}}
    assert mobile_client.post("/predict", json=body).json()["results"] == [[]]


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ({"text": []}, "holds no text"),
        ({"text": [""]}, "is empty"),
        ({"text": ["cat", "  \t "]}, "is empty"),
        ({"text": ["x" * (MAX_CONCEPT_CHARS + 1)]}, "at most 200"),
        ({"text": ["x" * 5_000_000]}, "at most 200"),
        ({"text": [7]}, "every row must be a string, got int"),
        ({"text": ["cat", None]}, "every row must be a string, got NoneType"),
        ({"text": {"a": 1}}, "must be a list of strings, got dict"),
        ({"text": ["x"] * 1001}, "at most 1000"),
        ({"words": ["cat"]}, "has no value.text"),
        ("cat", "has no value.text"),
    ],
)
def test_bad_textarea_values_are_400s(mobile_client, task, value, words):
    region = dict(textarea(), value=value)
    assert words in error_of(predict(mobile_client, task, [region]))


def test_other_textarea_mistakes_are_400s(mobile_client, task):
    assert "typed concept and smart regions" in error_of(predict(mobile_client, task, [textarea("cat"), kp(1, 1)]))
    assert "not a concept TextArea" in error_of(predict(mobile_client, task, [textarea("cat", from_name="notes")]))
    assert "no <Image name='other'>" in error_of(predict(mobile_client, task, [textarea("cat", to_name="other")]))
    two = CONFIG.replace('perRegion="false"/>', 'perRegion="false"/><TextArea name="notes" toName="image"/>')
    assert "not a concept TextArea" not in error_of(predict(mobile_client, task, [textarea("cat")], two))
    marked = two.replace('<TextArea name="notes" toName="image"/>', '<TextArea name="notes" toName="image" '
                         'concept="true"/>')
    assert "not a concept TextArea of 'image' (concept TextAreas: 'notes'" in error_of(
        predict(mobile_client, task, [textarea("cat")], marked))


def test_per_region_text_beside_a_smart_rectangle_is_not_a_concept(mobile_client, task):
    """A smart rectangle with a per-region TextArea arrives as two results with one id: still one mask."""
    config = CONFIG.replace('perRegion="false"/>', 'perRegion="false"/><TextArea name="note" toName="image" '
                            'perRegion="true"/>')
    box = rect(120, 20, 400, 290)
    note = {"id": box["id"], "from_name": "note", "to_name": "image", "type": "textarea",
            "value": {"text": ["a cat"]}, "original_width": W, "original_height": H}
    response = predict(mobile_client, task, [box, note], config)
    assert response.status_code == 200, response.text
    assert [r["type"] for r in response.json()["results"][0]["result"]] == ["brushlabels"]


# -- SAM 3 -----------------------------------------------------------------------------------------------
def brush(region) -> np.ndarray:
    return brush_rle_decode(region["value"]["rle"], region["original_height"], region["original_width"])


def brushes(prediction) -> list[dict]:
    return [r for r in prediction["result"] if r["type"] == "brushlabels"]


def iou(a, b) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def assert_same_instances(regions: list[dict], instances, label: str) -> None:
    """One brush region per (non-empty) instance, matched by IoU: masks IoU >= 0.999, scores within 1e-3."""
    expected = [(m, float(s)) for m, s in zip(instances.masks, instances.scores, strict=True) if m.any()]
    assert expected, "the engine found nothing: pick another threshold"
    assert len(regions) == len(expected)
    served = [(brush(r), r["score"], r) for r in regions]
    assert {r["value"]["brushlabels"][0] for _, _, r in served} == {label}
    used: set[int] = set()
    for mask, score in expected:
        best = max((i for i in range(len(served)) if i not in used), key=lambda i: iou(served[i][0], mask))
        used.add(best)
        assert iou(served[best][0], mask) >= 0.999
        assert served[best][1] == pytest.approx(score, abs=1e-3)


@pytest.fixture(scope="module")
def sam3_backend(sam3_model, sam3_chelsea_embedding, png_dir):
    """Factory: a TestClient on a fresh backend serving ``sam3_model``, chelsea's embedding in its cache."""
    from starlette.testclient import TestClient

    from label_anything.app.interactive import Backend
    from label_anything.engine.cache import EmbeddingCache, cache_key
    from label_anything.server.http import create_app

    clients = []

    def make(**options) -> TestClient:
        fetcher = ImageFetcher(local_files_root=png_dir)
        assert fetcher.fetch("/data/local-files/?d=" + quote("chelsea 1.png"))[1] == sam3_chelsea_embedding.image_digest
        cache = EmbeddingCache(dtype=np.float32)
        cache.put(cache_key(sam3_model.info.model_id, sam3_chelsea_embedding.image_digest), sam3_chelsea_embedding)
        concepts = ConceptOptions(**{"threshold": THRESHOLD, **options.pop("concepts", {})})
        outputs = options.pop("outputs", OutputOptions(mask=True, bbox=True))
        backend = Backend(sam3_model, fetcher, cache, ServeOptions(outputs=outputs, concepts=concepts, **options))
        client = TestClient(create_app(backend))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def instances(sam3_model, sam3_chelsea_embedding):
    """Memo: the engine's own answer to a ConceptPrompt on chelsea (the expected instances)."""
    from label_anything.engine.concepts import ConceptPrompt

    found = {}

    def of(text=None, boxes=()):
        key = (text, tuple(map(tuple, boxes)))
        if key not in found:
            prompt = ConceptPrompt.from_lists(text=text, boxes=boxes, threshold=THRESHOLD)
            found[key] = sam3_model.find_instances(sam3_chelsea_embedding, prompt)
        return found[key]

    return of


@pytest.mark.slow
def test_typed_concept_answers_every_instance(sam3_backend, task, instances, caplog):
    caplog.set_level(logging.INFO, logger="label_anything.server")
    client = sam3_backend()
    t0 = time.perf_counter()
    response = predict(client, task, [textarea("tabby", "cat")])  # the newest row is the concept
    elapsed = time.perf_counter() - t0
    assert response.status_code == 200, response.text
    prediction = response.json()["results"][0]
    cats = instances("cat")
    assert len(cats) >= 5
    assert_same_instances(brushes(prediction), cats, "cat")
    boxes = [r for r in prediction["result"] if r["type"] == "rectanglelabels"]
    assert len(boxes) == len(brushes(prediction)) and {r["value"]["rectanglelabels"][0] for r in boxes} == {"cat"}
    # one answer per instance: its brush and box share an answer id, no two instances share one
    answers = [answer_of(r["id"]) for r in brushes(prediction)]
    assert len(set(answers)) == len(answers) and {answer_of(r["id"]) for r in boxes} == set(answers)
    sizes = {(r["original_width"], r["original_height"], r["to_name"]) for r in prediction["result"]}
    assert sizes == {(W, H, "image")}
    assert prediction["score"] == pytest.approx(np.mean([s for m, s in zip(cats.masks, cats.scores, strict=True)
                                                         if m.any()]), abs=1e-3)
    print(f"\n[SAM 3 random weights, CPU] typed concept: {len(answers)} instances in {elapsed:.1f} s")
    # "LABEL: phrase": the phrase's instances under the label named before the colon
    response = predict(client, task, [textarea("Person: cat")])
    assert response.status_code == 200, response.text
    assert_same_instances(brushes(response.json()["results"][0]), cats, "person")
    # a phrase that names no label, with two labels to choose from: refused before any query
    assert "names no label" in error_of(predict(client, task, [textarea("dog")]))
    assert any("concept 'cat'" in r.getMessage() and "instance(s)" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_retrieve_predictions_answers_every_label_per_task(sam3_backend, task, instances):
    client = sam3_backend()
    boxed = {"id": 9, "data": task["data"], "annotations": [{"id": 1, "result": [rect(120, 20, 400, 290, "person")]}]}
    body = {"tasks": [task, {"id": 8, "data": task["data"]}, boxed], "project": "1.1", "label_config": CONFIG,
            "params": {"context": None}}
    t0 = time.perf_counter()
    response = client.post("/predict", json=body)
    elapsed = time.perf_counter() - t0
    assert response.status_code == 200, response.text
    first, second, third = response.json()["results"]
    for prediction in (first, second):  # one prediction per task, with every label's instances
        assert isinstance(prediction, dict) and prediction["model_version"] == client.app.state.backend.model_version
        regions = brushes(prediction)
        for label in LABELS:
            assert_same_instances([r for r in regions if r["value"]["brushlabels"] == [label]], instances(label), label)
    # a task holding rectangles gets boxes to masks, not its labels' instances
    (mask,) = brushes(third)
    assert mask["value"]["brushlabels"] == ["person"] and brush(mask).any()
    print(f"\n[SAM 3 random weights, CPU] Retrieve predictions, 3 tasks: {elapsed:.1f} s")


@pytest.mark.slow
def test_retrieve_predictions_budget_leaves_later_tasks_for_a_rerun(sam3_backend, task, instances, caplog):
    client = sam3_backend(boxes_seconds=0.0, concepts={"concepts": {"person": ()}})  # person: no phrase, skipped
    tasks = [{"id": i, "data": task["data"]} for i in (1, 2, 3)]

    def retrieve(selection):
        body = {"tasks": selection, "project": "1.1", "label_config": CONFIG, "params": {"context": None}}
        response = client.post("/predict", json=body)
        assert response.status_code == 200, response.text
        return response.json()["results"]

    first, *rest = retrieve(tasks)
    assert rest == [[], []]  # over the budget after one task: left for a rerun, stored as nothing
    assert {r["value"]["brushlabels"][0] for r in brushes(first)} == {"cat"}
    assert_same_instances(brushes(first), instances("cat"), "cat")
    assert any("2 task(s) left without predictions" in r.getMessage() for r in caplog.records)
    again, last = retrieve(tasks[1:])  # what Label Studio sends on a rerun: the tasks with no prediction
    assert isinstance(again, dict) and len(brushes(again)) == len(brushes(first)) and last == []


@pytest.mark.slow
def test_find_similar_from_an_exemplar_rectangle(sam3_backend, task, instances, sam3_model):
    client = sam3_backend(outputs=OutputOptions(mask=True))
    config = CONFIG.replace('<Label value="cat" background="#e51515" smart="true"/>',
                            '<Label value="cat" background="#e51515" smart="true" exemplar="true"/>')
    assert parse_label_config(config).is_exemplar("image", "RectangleLabels", "cat")
    box = (120, 20, 400, 290)
    response = predict(client, task, [rect(*box)], config)
    assert response.status_code == 200, response.text
    assert_same_instances(brushes(response.json()["results"][0]), instances(boxes=[box]), "cat")
    # a rectangle of a label that is no exemplar is one box prompt: one mask, from SAM 3's click decoder
    response = predict(client, task, [rect(*box, label="person")], config)
    assert response.status_code == 200, response.text
    (mask,) = brushes(response.json()["results"][0])
    assert mask["value"]["brushlabels"] == ["person"] and brush(mask).any()


@pytest.mark.slow
def test_sam3_clicks_refine_with_its_own_logits(sam3_backend, task, sam3_model, sam3_chelsea_embedding):
    """The second click of an object feeds SAM 3's (1, 288, 288) logits back (Prompt accepts that size)."""
    from label_anything.engine import decode

    client = sam3_backend(outputs=OutputOptions(mask=True))
    first = predict(client, task, [kp(200, 120)])
    assert first.status_code == 200, first.text
    _, _, logits = decode(sam3_model, sam3_chelsea_embedding, Prompt.from_lists([(200, 120)])).best()
    assert logits.shape == (1, 288, 288)
    second = predict(client, task, [kp(200, 120), kp(380, 40, positive=False)])
    assert second.status_code == 200, second.text
    refined = decode(sam3_model, sam3_chelsea_embedding,
                     Prompt.from_lists([(200, 120), (380, 40)], [1, 0], mask_logits=logits)).best()[0]
    (mask,) = brushes(second.json()["results"][0])
    assert iou(brush(mask), refined) >= 0.999
