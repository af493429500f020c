"""Interactive context → prompt in pixels; the one percent ↔ pixel conversion; refinement memory."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from label_anything.app.interactive import click_prompt
from label_anything.app.refine import RefineMemory
from label_anything.geometry.coords import percent_to_pixels, pixels_to_percent
from label_anything.labelstudio.context import ContextError, parse_context

W, H = 451, 300


def keypoint(x, y, label="cat", positive=True, to_name="image"):
    return {
        "original_width": W,
        "original_height": H,
        "image_rotation": 0,
        "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label]},
        "is_positive": positive,
        "id": f"k{x}{y}",
        "from_name": "KeyPointLabels",
        "to_name": to_name,
        "type": "keypointlabels",
        "origin": "manual",
    }


def rectangle(x, y, w, h, label="cat"):
    return {
        "original_width": W,
        "original_height": H,
        "image_rotation": 0,
        "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [label]},
        "id": "r1",
        "from_name": "RectangleLabels",
        "to_name": "image",
        "type": "rectanglelabels",
    }


def test_keypoints_become_pixels_with_signs():
    click = parse_context({"result": [keypoint(50, 50), keypoint(10, 20, positive=False)]})
    assert click.label == "cat" and click.to_name == "image" and (click.width, click.height) == (W, H)
    np.testing.assert_allclose(click.points, [[W / 2, H / 2], [0.1 * W, 0.2 * H]], rtol=1e-6)
    assert click.point_labels.tolist() == [1, 0]
    assert click.box is None


def test_rectangle_becomes_xyxy_pixels():
    click = parse_context({"result": [rectangle(10, 20, 30, 40)]})
    np.testing.assert_allclose(click.box, [0.1 * W, 0.2 * H, 0.4 * W, 0.6 * H], rtol=1e-6)
    assert len(click.points) == 0


def test_points_and_rectangle_make_one_prompt():
    click = parse_context(
        {"result": [rectangle(10, 20, 30, 40), keypoint(25, 40), keypoint(12, 22, positive=False)]}
    )
    prompt = click_prompt(click)
    assert prompt.box is not None and len(prompt.points) == 2 and prompt.point_labels.tolist() == [1, 0]


def test_last_label_wins_when_labels_are_mixed():
    click = parse_context(
        {"result": [keypoint(1, 1, "person"), keypoint(50, 50, "cat"), keypoint(60, 60, "cat")]}
    )
    assert click.label == "cat" and len(click.points) == 2


def test_empty_context_means_no_prompt():
    assert parse_context({"result": []}) is None


@pytest.mark.parametrize(
    "context",
    [
        None,
        [],
        {"result": "x"},
        {"result": [dict(keypoint(1, 1), original_width=0)]},
        {"result": [dict(keypoint(1, 1), value={"x": "a", "y": 1, "keypointlabels": ["cat"]})]},
        {"result": [dict(keypoint(1, 1), value={"x": float("nan"), "y": 1, "keypointlabels": ["cat"]})]},
        {"result": [dict(keypoint(1, 1), value={"x": 1, "y": 1})]},
        {"result": [rectangle(10, 10, 0, 5)]},
    ],
)
def test_malformed_contexts_are_context_errors(context):
    with pytest.raises(ContextError):
        parse_context(context)


@given(
    st.floats(1, 99, allow_nan=False),
    st.floats(1, 99, allow_nan=False),
    st.integers(2, 20000),
    st.integers(2, 20000),
)
def test_percent_round_trip_keeps_each_axis(x, y, width, height):
    """Percent of a non-square image → pixels (x of the width, y of the height) → percent, through the
    click the backend builds: a swap of width and height, or of x and y, moves the point."""
    assume(width != height and abs(x - y) > 1e-6)
    click = parse_context({"result": [dict(keypoint(x, y), original_width=width, original_height=height)]})
    assert (click.width, click.height) == (width, height)
    (px, py), = click.points.astype(np.float64)
    assert (px, py) == (pytest.approx(x / 100 * width, rel=1e-6), pytest.approx(y / 100 * height, rel=1e-6))
    assert pixels_to_percent(percent_to_pixels(x, click.width), click.width) == pytest.approx(x, rel=1e-12)
    assert pixels_to_percent(percent_to_pixels(y, click.height), click.height) == pytest.approx(y, rel=1e-12)


def test_answer_box_is_in_percent_of_each_axis():
    """A mask on a 451x300 image, away from the diagonal (columns 10-39, rows 200-249): the answered
    rectangle, read back as Label Studio does, covers exactly those pixels."""
    from label_anything.labelstudio.results import OutputOptions, mask_results

    mask = np.zeros((H, W), bool)
    mask[200:250, 10:40] = True
    click = parse_context({"result": [keypoint(5, 70)]})
    (region,) = mask_results(mask, 0.9, click, {"rectanglelabels": "r"}, OutputOptions(mask=False, bbox=True))
    v = region["value"]
    assert (region["original_width"], region["original_height"]) == (W, H)
    corners = (v["x"] * W / 100, v["y"] * H / 100, (v["x"] + v["width"]) * W / 100, (v["y"] + v["height"]) * H / 100)
    assert corners == tuple(pytest.approx(c, abs=1e-9) for c in (10, 200, 40, 250))


def test_refine_memory_needs_all_old_points_plus_a_new_one():
    memory = RefineMemory(max_entries=2)
    logits = np.ones((1, 256, 256), np.float32)
    first = parse_context({"result": [keypoint(50, 50)]})
    second = parse_context({"result": [keypoint(50, 50), keypoint(10, 10, positive=False)]})
    moved = parse_context({"result": [keypoint(51, 50), keypoint(10, 10, positive=False)]})
    key = ("1", "image", "cat")
    assert memory.previous_logits(key, first, "img") is None
    memory.remember(key, first, "img", logits)
    assert memory.previous_logits(key, first, "img") is None  # nothing new: answer fresh
    assert memory.previous_logits(key, second, "img") is logits or np.array_equal(
        memory.previous_logits(key, second, "img"), logits
    )
    assert memory.previous_logits(key, second, "other image") is None
    assert memory.previous_logits(key, moved, "img") is None
    assert memory.previous_logits(("1", "image", "person"), second, "img") is None
    memory.remember(("2", "image", "cat"), first, "img", logits)
    memory.remember(("3", "image", "cat"), first, "img", logits)
    assert len(memory) == 2 and memory.previous_logits(key, second, "img") is None  # evicted (LRU)
