"""Property-based fuzzing (issue 7): the context parser raises only ContextError, and the /predict body
parser answers every body with JSON and a status below 500. Time-bounded by max_examples so the whole
file stays under ~15 s once the model is loaded."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from starlette.testclient import TestClient

from label_anything.app.interactive import Backend, ServeOptions
from label_anything.engine.cache import EmbeddingCache
from label_anything.imaging.fetch import ImageFetcher
from label_anything.labelstudio.context import Click, ContextError, parse_context
from label_anything.labelstudio.results import OutputOptions
from label_anything.server.http import create_app

W, H = 32, 24

# any JSON value (NaN and infinities included: Python's json reads them)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)

# something a value of a known key might be: plausible numbers, and anything else
numbers = st.one_of(st.floats(-10, 110), st.integers(-5, 200), st.just(math.nan), json_values)


@st.composite
def regions(draw) -> dict:
    """A smart region close to what Label Studio sends, with any field possibly replaced or dropped."""
    type_ = draw(st.sampled_from(["keypointlabels", "rectanglelabels", "brushlabels", "x"]) | json_values)
    value = {
        "x": draw(numbers),
        "y": draw(numbers),
        "width": draw(numbers),
        "height": draw(numbers),
        "rotation": draw(st.just(0) | numbers),
        str(type_): draw(st.just(["cat"]) | json_values),
    }
    region = {
        "original_width": draw(st.just(W) | numbers),
        "original_height": draw(st.just(H) | numbers),
        "image_rotation": draw(st.just(0) | numbers),
        "value": draw(st.just(value) | json_values),
        "is_positive": draw(json_values),
        "from_name": "KeyPointLabels",
        "to_name": draw(st.just("image") | json_values),
        "type": type_,
    }
    for key in draw(st.lists(st.sampled_from(sorted(region)), max_size=2)):
        region.pop(key, None)
    return region


contexts = st.one_of(
    json_values,
    st.fixed_dictionaries({"result": st.lists(regions(), max_size=4)}),
    st.fixed_dictionaries({"result": st.lists(regions() | json_values, max_size=3)}),
)


@settings(max_examples=300, deadline=None)
@given(contexts)
def test_parse_context_raises_only_context_error(context):
    try:
        click = parse_context(context)
    except ContextError:
        return
    assert click is None or isinstance(click, Click)
    if click is not None:
        assert np.isfinite(click.points).all() and click.points.shape[1] == 2
        assert ((click.points >= 0) & (click.points <= [click.width, click.height])).all()


@pytest.fixture(scope="module")
def fuzz_client(mobile_sam_model, tmp_path_factory, original_label_config):
    """A TestClient on a backend without background encoding (the fuzz must not queue model work)."""
    root = tmp_path_factory.mktemp("fuzz-images")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)).save(buf, "PNG")
    (root / "ok.png").write_bytes(buf.getvalue())
    options = ServeOptions(outputs=OutputOptions(mask=True, bbox=True, poly=True), prefetch=False)
    backend = Backend(mobile_sam_model, ImageFetcher(local_files_root=root), EmbeddingCache(), options)
    with TestClient(create_app(backend), raise_server_exceptions=False) as client:
        yield client


IMAGE = "/data/local-files/?d=ok.png"
task_data = st.fixed_dictionaries({"image": st.just(IMAGE) | json_values})
tasks = st.fixed_dictionaries({"id": json_values, "data": task_data}) | json_values
CLICK = {
    "original_width": W,
    "original_height": H,
    "value": {"x": 50, "y": 50, "keypointlabels": ["cat"]},
    "to_name": "image",
    "type": "keypointlabels",
}
VALID_BODY = {
    "tasks": [{"id": 1, "data": {"image": IMAGE}}],
    "label_config": "CONFIG",
    "params": {"context": {"result": [CLICK]}},
}
bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {
            "tasks": st.lists(tasks, max_size=2) | json_values,
            "project": json_values,
            "label_config": st.sampled_from(["CONFIG", "<View/>", "<nope", ""]) | json_values,
            "params": st.fixed_dictionaries({"context": contexts}) | json_values,
        }
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies)
@example(body=VALID_BODY)  # the success path is always in the run, whatever hypothesis draws
@example(body={**VALID_BODY, "params": {"context": {"result": [CLICK, {**CLICK, "value": [1]}]}}})
def test_predict_never_answers_5xx(fuzz_client, original_label_config, body):
    if isinstance(body, dict) and body.get("label_config") == "CONFIG":
        body = {**body, "label_config": original_label_config}
    response = fuzz_client.post(
        "/predict", content=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    assert response.status_code < 500, response.text
    answer = response.json()
    if response.status_code == 200:
        assert isinstance(answer["results"], list)
    else:
        assert set(answer) == {"error", "status"} and "Traceback" not in answer["error"]


def test_the_fuzzed_backend_answers_a_valid_click(fuzz_client, original_label_config):
    """Guards the fuzz above against passing vacuously (a backend that refuses everything)."""
    response = fuzz_client.post("/predict", json={**VALID_BODY, "label_config": original_label_config})
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["result"]
