"""SAM 3 through our engine and ``segment`` equals Meta's official processor and click predictor.

One random-weight checkpoint (official ``sam3.pt`` layout, loaded through ``load_model``), one photo encoded
once by us (the ``sam3_chelsea_embedding`` fixture) and once by the official ``Sam3Processor.set_image``;
every prompt kind is then answered by both. Random weights score every query ~0.32, so the threshold is
lowered to keep a few dozen instances (the official default 0.5 would keep none and test nothing).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest

from label_anything.engine.concepts import ConceptPrompt, Instances, answers_concepts
from label_anything.engine.prompts import Prompt
from label_anything.errors import CheckpointError, LabelAnythingError, PromptError

pytestmark = pytest.mark.slow

THRESHOLD = 0.322  # keeps ~50 of the 200 queries of "cat" on chelsea with these random weights
CAT_BOX = (120.0, 40.0, 330.0, 290.0)  # xyxy pixels on chelsea (451 × 300)
OTHER_BOX = (10.0, 200.0, 90.0, 290.0)
CLICK = (270.0, 150.0)


@pytest.fixture(scope="module")
def official(sam3_model, chelsea):
    """The official processor on the same network, with chelsea set (its own encode, ~30–50 s)."""
    from PIL import Image
    from sam3.model.sam3_image_processor import Sam3Processor

    processor = Sam3Processor(sam3_model.network, device="cpu", confidence_threshold=THRESHOLD)
    state = processor.set_image(Image.fromarray(chelsea))
    return processor, state


def _official_instances(official, text: str | None, boxes=(), labels=()) -> Instances:
    """Meta's own calls: set_text_prompt, then add_geometric_prompt per box (the last answer has them all)."""
    import torch

    processor, state = official
    processor.reset_all_prompts(state)
    w, h = state["original_width"], state["original_height"]
    out = state
    if text is not None:
        out = processor.set_text_prompt(text, state)
    for (x0, y0, x1, y1), label in zip(boxes, labels, strict=True):
        cxcywh = [(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h]
        out = processor.add_geometric_prompt(cxcywh, label, state)
    with torch.inference_mode():
        return Instances(
            masks=out["masks"][:, 0].cpu().numpy(),
            boxes=out["boxes"].float().cpu().numpy(),
            scores=out["scores"].float().cpu().numpy(),
        )


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def assert_same_instances(ours: Instances, theirs: Instances, min_iou: float = 0.999) -> None:
    """Same count; each of ours has an official instance with IoU ≥ min_iou and the same score (1e-3)."""
    assert len(ours) == len(theirs) > 0
    assert np.all(np.diff(ours.scores) <= 0), "ours are best first"
    unmatched = set(range(len(theirs)))
    for mask, score, box in zip(ours.masks, ours.scores, ours.boxes, strict=True):
        best = max(unmatched, key=lambda j: (_iou(mask, theirs.masks[j]), -abs(theirs.scores[j] - score)))
        assert _iou(mask, theirs.masks[best]) >= min_iou
        assert abs(float(theirs.scores[best]) - float(score)) <= 1e-3
        np.testing.assert_allclose(box, theirs.boxes[best], atol=0.05)
        unmatched.remove(best)


def test_loaded_model_is_sam3_and_answers_concepts(sam3_model, sam3_chelsea_embedding):
    assert sam3_model.info.name == "sam3"
    assert sam3_model.info.model_id.startswith("sam3-sam3-")
    assert answers_concepts(sam3_model)
    arrays = sam3_chelsea_embedding.arrays
    assert arrays["detector_fpn_0"].shape == (1, 256, 288, 288)
    assert arrays["features"].shape == (1, 256, 72, 72)
    assert sam3_chelsea_embedding.original_size == (300, 451)
    # what the cache budgets: 132.7 MB in float32 (66 MB as the cache stores it, float16)
    assert sam3_chelsea_embedding.nbytes == 4 * 256 * (288**2 + 144**2 + 2 * 72**2) + 4 * (32 * 288**2 + 64 * 144**2)


def test_our_encode_equals_the_official_backbone(sam3_chelsea_embedding, official):
    _, state = official
    fpn = state["backbone_out"]["backbone_fpn"]
    for level, key in enumerate(("detector_fpn_0", "detector_fpn_1", "detector_fpn_2")):
        np.testing.assert_array_equal(sam3_chelsea_embedding.arrays[key], fpn[level].numpy())


@pytest.mark.parametrize(
    ("text", "boxes", "labels"),
    [
        ("cat", (), ()),
        (None, (CAT_BOX,), (True,)),
        ("cat", (CAT_BOX,), (True,)),
        ("cat", (CAT_BOX, OTHER_BOX), (True, False)),
    ],
    ids=["concept", "exemplar", "concept+exemplar", "concept+exemplar+counter-example"],
)
def test_concept_prompts_equal_the_official_processor(sam3_model, sam3_chelsea_embedding, official, text, boxes,
                                                      labels):
    ours = sam3_model.find_instances(
        sam3_chelsea_embedding, ConceptPrompt.from_lists(text=text, boxes=boxes, labels=labels, threshold=THRESHOLD)
    )
    assert_same_instances(ours, _official_instances(official, text, boxes, labels))


def test_the_float16_cache_keeps_concept_answers(sam3_model, sam3_chelsea_embedding, official):
    """What serve and the batch command decode from: the embedding as the cache stores it (float16)."""
    from label_anything.engine.cache import to_storage_dtype

    stored = to_storage_dtype(sam3_chelsea_embedding)
    assert stored.nbytes == sam3_chelsea_embedding.nbytes // 2
    ours = sam3_model.find_instances(stored, ConceptPrompt(text="cat", threshold=THRESHOLD))
    assert_same_instances(ours, _official_instances(official, "cat"))


def test_threshold_keeps_exactly_the_instances_above_it(sam3_model, sam3_chelsea_embedding):
    every = sam3_model.find_instances(sam3_chelsea_embedding, ConceptPrompt(text="cat", threshold=0.0))
    assert len(every) == 200  # SAM 3's 200 queries
    cut = float(np.median(every.scores))
    kept = sam3_model.find_instances(sam3_chelsea_embedding, ConceptPrompt(text="cat", threshold=cut))
    assert len(kept) == int((every.scores > cut).sum())
    none = sam3_model.find_instances(sam3_chelsea_embedding, ConceptPrompt(text="cat"))  # official 0.5
    assert len(none) == 0 and none.masks.shape == (0, 300, 451) and none.boxes.shape == (0, 4)


def test_masks_that_would_not_fit_in_memory_are_counted_not_allocated(sam3_model, sam3_chelsea_embedding,
                                                                       monkeypatch):
    """200 full-size masks of a 100-megapixel photo would be 20 GB: the answer keeps the best that fit."""
    from label_anything.engine import sam3 as engine_sam3

    every = sam3_model.find_instances(sam3_chelsea_embedding, ConceptPrompt(text="cat", threshold=0.0))
    monkeypatch.setattr(engine_sam3, "MAX_INSTANCE_MASK_BYTES", 7 * 300 * 451 + 5)
    capped = sam3_model.find_instances(sam3_chelsea_embedding, ConceptPrompt(text="cat", threshold=0.0))
    assert len(capped) == 7 and capped.left_out == 200 - 7 and every.left_out == 0
    np.testing.assert_array_equal(capped.masks, every.masks[:7])
    np.testing.assert_array_equal(capped.scores, every.scores[:7])


def _official_click(official, **kwargs):
    processor, state = official
    return processor.model.predict_inst(state, **kwargs)


@pytest.mark.parametrize(
    ("points", "labels", "box"),
    [
        ([CLICK], [1], None),
        ([CLICK, (100.0, 250.0)], [1, 0], None),
        ([], [], CAT_BOX),
        ([CLICK], [1], CAT_BOX),
    ],
    ids=["click", "click+negative", "box", "box+click"],
)
def test_clicks_and_boxes_equal_predict_inst(sam3_model, sam3_chelsea_embedding, official, points, labels, box):
    prompt = Prompt.from_lists(points=points, labels=labels, box=box)
    ours = sam3_model.decode(sam3_chelsea_embedding, prompt, keep="all")
    masks, scores, low_res = _official_click(
        official,
        point_coords=np.array(points, np.float32) if points else None,
        point_labels=np.array(labels, np.int32) if points else None,
        box=None if box is None else np.array(box, np.float32),
        multimask_output=prompt.is_single_click,
    )
    assert ours.masks.shape == masks.shape
    for a, b in zip(ours.masks, masks.astype(bool), strict=True):
        assert _iou(a, b) >= 0.999
    np.testing.assert_allclose(ours.scores, scores, atol=1e-3)
    np.testing.assert_allclose(ours.low_res_logits, low_res, atol=1e-3)


def test_refinement_with_the_previous_logits_equals_predict_inst(sam3_model, sam3_chelsea_embedding, official):
    first = sam3_model.decode(sam3_chelsea_embedding, Prompt.from_lists(points=[CLICK]))
    _, _, logits = first.best()
    assert logits.shape == (1, 288, 288)
    points, labels = [CLICK, (330.0, 60.0)], [1, 0]
    ours = sam3_model.decode(sam3_chelsea_embedding, Prompt.from_lists(points=points, labels=labels,
                                                                       mask_logits=logits))
    masks, scores, _ = _official_click(
        official, point_coords=np.array(points, np.float32), point_labels=np.array(labels, np.int32),
        mask_input=logits, multimask_output=False,
    )
    assert _iou(ours.masks[0], masks[0].astype(bool)) >= 0.999
    assert abs(float(ours.scores[0]) - float(scores[0])) <= 1e-3


def test_logits_of_another_model_are_a_prompt_error_not_a_crash(sam3_model, sam3_chelsea_embedding,
                                                                 mobile_sam_model, chelsea):
    """SAM 3 answers (1, 288, 288) logits, SAM 1 / 2.1 (1, 256, 256): refining with the other's is refused."""
    from label_anything.engine import encode

    sam1 = encode(mobile_sam_model, chelsea, "chelsea")
    with pytest.raises(PromptError, match=r"\(1, 288, 288\) logits"):
        sam3_model.decode(sam3_chelsea_embedding, Prompt.from_lists([CLICK], mask_logits=np.zeros((1, 256, 256))))
    with pytest.raises(PromptError, match=r"\(1, 256, 256\) logits"):
        mobile_sam_model.decode(sam1, Prompt.from_lists([CLICK], mask_logits=np.zeros((1, 288, 288))))


def test_clicks_from_many_threads_equal_one_at_a_time(sam3_model, sam3_chelsea_embedding):
    prompts = [Prompt.from_lists(points=[(60.0 + 40 * i, 150.0)]) for i in range(6)]
    alone = [sam3_model.decode(sam3_chelsea_embedding, p).masks for p in prompts]
    together: list[np.ndarray | None] = [None] * len(prompts)

    def run(i: int) -> None:
        together[i] = sam3_model.decode(sam3_chelsea_embedding, prompts[i]).masks

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_array_equal(a, b)


def test_bad_concept_prompts_are_prompt_errors():
    with pytest.raises(PromptError, match="phrase or at least one exemplar"):
        ConceptPrompt(text="   ")
    with pytest.raises(PromptError, match="short phrase"):
        ConceptPrompt(text="cat " * 100)
    with pytest.raises(PromptError, match="x1 > x0"):
        ConceptPrompt.from_lists(boxes=[(10, 10, 5, 20)])
    with pytest.raises(PromptError, match="finite"):
        ConceptPrompt.from_lists(boxes=[(0, 0, float("nan"), 20)])
    with pytest.raises(PromptError, match=r"\[0, 1\]"):
        ConceptPrompt(text="cat", threshold=1.5)
    with pytest.raises(PromptError, match="box labels"):
        ConceptPrompt(text="cat", boxes=np.zeros((2, 4)), box_labels=np.ones(3, bool))


def test_a_checkpoint_of_another_model_is_refused_in_one_sentence(sam3_model, tmp_path):
    from label_anything.engine.sam3 import load_sam3_weights

    path = tmp_path / "not-sam3.pt"
    with pytest.raises(CheckpointError, match=r"not a SAM 3 checkpoint \(no detector"):
        load_sam3_weights(sam3_model.network, {"image_encoder.patch_embed.proj.weight": np.zeros(3)}, path)
    some = {"detector." + k: v for k, v in list(sam3_model.network.state_dict().items())[:5]}
    with pytest.raises(CheckpointError, match="tensors missing"):
        load_sam3_weights(sam3_model.network, some, path)


def test_without_the_sam3_package_the_message_says_how_to_install(monkeypatch):
    from label_anything.engine import sam3 as engine_sam3

    monkeypatch.setitem(sys.modules, "sam3", None)
    with pytest.raises(LabelAnythingError, match=r"pip install 'label-anything\[sam3\]'.*SAM License"):
        engine_sam3.sam3_package()


# -- segment (the CLI, a process of its own) ------------------------------------------------------------
@pytest.fixture(scope="module")
def chelsea_png(chelsea, tmp_path_factory):
    """Lossless, so the CLI's pixel digest finds the embedding already in ``sam3_cache_dir``."""
    from PIL import Image

    path = tmp_path_factory.mktemp("sam3-images") / "chelsea.png"
    Image.fromarray(chelsea).save(path)
    return path


def _segment(args: list[str], sam3_checkpoint, sam3_cache_dir) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "label_anything", "segment", *args, "--model-name", "sam3",
               "--checkpoint", str(sam3_checkpoint), "--cache-dir", str(sam3_cache_dir), "--device", "cpu"]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def test_segment_concept_writes_every_instance_equal_to_the_official_processor(
    sam3_checkpoint, sam3_cache_dir, chelsea_png, official, tmp_path
):
    out = tmp_path / "cat.png"
    run = _segment([str(chelsea_png), "--concept", "cat", "--exemplar", ",".join(map(str, OTHER_BOX)) + ",0",
                    "--concept-threshold", str(THRESHOLD), "--out", str(out), "--json"],
                   sam3_checkpoint, sam3_cache_dir)
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    assert answer["concept"] == "cat" and answer["model"].startswith("sam3-sam3-")
    from PIL import Image

    masks = np.stack([np.asarray(Image.open(item["mask"])) > 0 for item in answer["instances"]])
    ours = Instances(masks=masks, boxes=np.zeros((len(masks), 4), np.float32),
                     scores=np.array([item["score"] for item in answer["instances"]], np.float32))
    theirs = _official_instances(official, "cat", (OTHER_BOX,), (False,))
    theirs = Instances(masks=theirs.masks, boxes=np.zeros_like(theirs.boxes), scores=theirs.scores)
    assert_same_instances(ours, theirs)
    assert sorted(p.name for p in tmp_path.glob("cat-*.png")) == sorted(f"cat-{k + 1}.png" for k in range(len(masks)))


def test_segment_click_equals_predict_inst(sam3_checkpoint, sam3_cache_dir, chelsea_png, official, tmp_path):
    out = tmp_path / "click.png"
    run = _segment([str(chelsea_png), "--point", "270,150", "--out", str(out), "--json"],
                   sam3_checkpoint, sam3_cache_dir)
    assert run.returncode == 0, run.stderr
    from PIL import Image

    mask = np.asarray(Image.open(out)) > 0
    masks, scores, _ = _official_click(official, point_coords=np.array([CLICK], np.float32),
                                       point_labels=np.array([1], np.int32), multimask_output=True)
    best = int(np.argmax(scores))
    assert _iou(mask, masks[best].astype(bool)) >= 0.999
    assert abs(json.loads(run.stdout)["score"] - float(scores[best])) <= 1e-3


def test_segment_concept_with_a_model_that_cannot_is_one_line(chelsea_png, tmp_path):
    run = subprocess.run([sys.executable, "-m", "label_anything", "segment", str(chelsea_png), "--concept", "cat",
                          "--model-name", "classical", "--out", str(tmp_path / "m.png")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and "need SAM 3" in run.stderr
    both = subprocess.run([sys.executable, "-m", "label_anything", "segment", str(chelsea_png), "--concept", "cat",
                           "--point", "10,10", "--model-name", "classical"], capture_output=True, text=True,
                          timeout=120)
    assert both.returncode == 2 and "one kind of prompt" in both.stderr
