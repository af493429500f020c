"""``concepts-to-masks``: every instance of named concepts over a dataset, as COCO with RLE masks.

Most cases run a weight-free stand-in for SAM 3 (``PixelConcepts``: a phrase picks a colour channel, its
instances are the pixels above three levels) in this process: the output's format, pycocotools, resume,
refusals, the cache and import-coco in a blink. The ``slow`` cases run SAM 3 itself (random weights): the
output equals ``find_instances`` on the same embeddings, and the real command killed (SIGKILL), its progress
file torn as by a kill mid-write, resumes to the uninterrupted output without querying a finished image
again (the journal under any number of kills at any byte is ``test_boxes_to_masks_kill``'s: both commands
use ``app.journal``). Every SAM 3 image is in the session's embedding cache before any run, so no run
encodes (one SAM 3 encode costs 30-50 s on 2 cores, loading the model in a new process ~30 s).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from label_anything.app.concepts_to_masks import (
    MODEL_BOX_FIELD,
    QUERYING,
    ConceptSet,
    coco_source,
    concept_set,
    concepts_to_masks,
    folder_source,
    parse_concepts,
)
from label_anything.app.journal import partial_path
from label_anything.cli.parser import main
from label_anything.engine.cache import EmbeddingCache, cache_key
from label_anything.engine.concepts import ConceptPrompt, Instances
from label_anything.engine.types import Embedding, ModelInfo
from label_anything.errors import LabelAnythingError
from label_anything.imaging.decode import image_digest

pycocotools_coco = pytest.importorskip("pycocotools.coco")
coco_mask = pytest.importorskip("pycocotools.mask")


# -- a weight-free stand-in ----------------------------------------------------------------------------
class PixelConcepts:
    """Answers concept prompts from the pixels: the phrase's length picks a channel (so "cat" and "dog" see the
    same things), instances are that channel above 60, 120 and 180, scoring 0.9, 0.6 and 0.3."""

    LEVELS = ((60, 0.9), (120, 0.6), (180, 0.3))

    def __init__(self) -> None:
        self.info = ModelInfo("pixels", "concepts", "ab" * 32, "cpu")
        self.encoded: list[str] = []

    def encode(self, image: np.ndarray, digest: str) -> Embedding:
        self.encoded.append(digest)
        return Embedding(self.info.model_id, digest, image.shape[:2], image.shape[:2], {"image": image.copy()})

    def decode(self, *args, **kwargs):
        raise NotImplementedError

    def find_instances(self, embedding: Embedding, prompt: ConceptPrompt) -> Instances:
        channel = embedding.arrays["image"][..., len(prompt.text or "") % 3]
        kept = [(channel > level, score) for level, score in self.LEVELS if score > prompt.threshold]
        masks = np.stack([m for m, _ in kept]) if kept else np.zeros((0, *channel.shape), bool)
        boxes = np.array([[1.5, 2.5, 30.0, 40.0]] * len(kept), np.float32).reshape(-1, 4)
        return Instances(masks=masks, boxes=boxes, scores=np.array([s for _, s in kept], np.float32))


def _picture(seed: int, size=(48, 64)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.zeros((*size, 3), np.uint8)
    for _ in range(4):  # a few flat rectangles of random colours
        y, x = rng.integers(0, size[0] - 10), rng.integers(0, size[1] - 10)
        image[y:y + rng.integers(5, 20), x:x + rng.integers(5, 30)] = rng.integers(0, 255, 3)
    return image


@pytest.fixture()
def folder(tmp_path) -> Path:
    """Three PNGs (one in a sub-folder, one named with a space), an undecodable .png, a 4000x3000 PNG and a
    text file that is no image."""
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    for i, name in enumerate(["a.png", "sub/b c.png", "z.png"]):
        Image.fromarray(_picture(i)).save(images / name)
    (images / "broken.png").write_bytes(b"not a png")
    Image.new("RGB", (4000, 3000)).save(images / "huge.png")
    (images / "notes.txt").write_text("hello")
    return images


def _run(model, source, spec: str, out: Path, **kwargs):
    return concepts_to_masks(model, source, concept_set(parse_concepts(spec)), out, progress=False, **kwargs)


def _masks_by_image(api) -> dict[str, list[dict]]:
    return {img["file_name"]: api.imgToAnns[img["id"]] for img in api.dataset["images"]}


def test_folder_run_writes_coco_that_pycocotools_loads_with_every_instance(folder, tmp_path):
    model = PixelConcepts()
    out = tmp_path / "out.json"
    report = _run(model, folder_source(folder, max_pixels=10**6), "animal=cat;person", out, threshold=0.5)
    assert report.skipped == {"image unreadable": 1, "image too large": 1}
    assert any("broken.png" in f for f in report.failed) and any("huge.png" in f for f in report.failed)
    assert report.images_done == 3 and report.encoded == 3 and not partial_path(out).exists()

    written = json.loads(out.read_text())
    assert written["categories"] == [{"id": 1, "name": "animal"}, {"id": 2, "name": "person"}]
    assert [(i["id"], i["file_name"], i["height"], i["width"]) for i in written["images"]] == [
        (1, "a.png", 48, 64), (2, "sub/b c.png", 48, 64), (3, "z.png", 48, 64)]
    api = pycocotools_coco.COCO(str(out))
    for img in written["images"]:
        pixels = np.asarray(Image.open(folder / img["file_name"]).convert("RGB"))
        embedding = Embedding("x", "d", pixels.shape[:2], pixels.shape[:2], {"image": pixels})
        expected = []
        for category_id, phrase in ((1, "cat"), (2, "person")):
            found = model.find_instances(embedding, ConceptPrompt(text=phrase, threshold=0.5))
            expected += [(category_id, phrase, m, s) for m, s in zip(found.masks, found.scores, strict=True) if m.any()]
        anns = api.imgToAnns[img["id"]]
        assert len(anns) == len(expected)
        for ann, (category_id, phrase, mask, score) in zip(anns, expected, strict=True):
            np.testing.assert_array_equal(api.annToMask(ann).astype(bool), mask)
            ys, xs = np.nonzero(mask)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
            assert ann["area"] == int(mask.sum()) == int(coco_mask.area(ann["segmentation"]))
            assert isinstance(ann["segmentation"]["counts"], str) and ann["iscrowd"] == 0
            assert (ann["category_id"], ann["concept"], ann["score"]) == (category_id, phrase, pytest.approx(score))
            assert ann[MODEL_BOX_FIELD] == [1.5, 2.5, 28.5, 37.5]
    assert [a["id"] for a in written["annotations"]] == list(range(1, len(written["annotations"]) + 1))


def test_duplicates_across_phrases_are_merged_unless_kept(folder, tmp_path):
    source = folder_source(folder, max_pixels=10**6)
    merged = _run(PixelConcepts(), source, "animal=cat,dog", tmp_path / "m.json", threshold=0.0)
    kept = _run(PixelConcepts(), source, "animal=cat,dog", tmp_path / "k.json", threshold=0.0, merge=False)
    m, k = (json.loads((tmp_path / n).read_text())["annotations"] for n in ("m.json", "k.json"))
    # "dog" sees exactly what "cat" sees: every dog instance is a duplicate of a cat one (same score: cat stays)
    assert {a["concept"] for a in m} == {"cat"} and len(k) == 2 * len(m) == 2 * merged.output.merged
    assert kept.output.merged == 0 and merged.output.by_category == {"animal": len(m)}


def test_coco_images_categories_and_what_cannot_be_used(folder, tmp_path):
    coco = {
        "info": {"description": "mine"}, "licenses": [{"id": 1}],
        "images": [{"id": 7, "file_name": "a.png", "height": 48, "width": 64, "license": 1},
                   {"id": 8, "file_name": "z.png"},  # no size: taken from the image
                   {"id": 9, "file_name": "sub/b c.png", "height": 10, "width": 10},  # wrong size
                   {"id": 10, "file_name": "missing.png"}, {"id": 11}, {"id": 12, "file_name": "a.png"},
                   {"id": 12, "file_name": "z.png"}, "junk"],
        "categories": [{"id": 3, "name": "cat", "supercategory": "animal"}, {"id": 5, "name": "person"}],
    }
    path = tmp_path / "in.json"
    path.write_text(json.dumps(coco))
    out = tmp_path / "out.json"
    model = PixelConcepts()
    report = _run(model, coco_source(path, folder), "cat;car", out)
    assert report.skipped == {"image size differs from the COCO size": 1, "image unreadable": 1,
                              "image has no file_name": 1, "image id repeated in images": 2,
                              "images entry without an id": 1}
    written = json.loads(out.read_text())
    assert written["info"] == coco["info"] and written["licenses"] == coco["licenses"]
    assert written["categories"] == [coco["categories"][0], {"id": 6, "name": "car"}]
    assert written["images"] == [coco["images"][0], {"id": 8, "file_name": "z.png", "height": 48, "width": 64}]
    assert {a["category_id"] for a in written["annotations"]} <= {3, 6}
    # without --concepts, the categories are the concepts
    default = coco_source(path, folder)
    from label_anything.app.concepts_to_masks import coco_concepts

    assert coco_concepts(default.categories).describe() == "cat=cat;person=person"


class StopError(Exception):
    pass


def test_resume_after_interruptions_equals_an_uninterrupted_run(folder, tmp_path):
    source = folder_source(folder, max_pixels=10**6)
    reference = tmp_path / "reference.json"
    _run(PixelConcepts(), source, "cat;person=person,someone", reference)
    out = tmp_path / "out.json"

    def stop(key: str) -> None:
        raise StopError(key)

    model = PixelConcepts()
    for run in range(2):  # two interrupted runs, each leaving a torn last line as a kill mid-write does
        with pytest.raises(StopError):
            _run(model, source, "cat;person=person,someone", out, after_image=stop)
        assert len(model.encoded) == run + 1 and not out.exists()
        with partial_path(out).open("a") as f:
            f.write('{"image": "\\"z.png\\"", "size": [48, 64], "inst')
    report = _run(model, source, "cat;person=person,someone", out)
    assert len(model.encoded) == 3 and len(set(model.encoded)) == 3  # nothing encoded twice
    assert report.images_resumed == 2 and report.images_done == 1
    assert json.loads(out.read_text()) == json.loads(reference.read_text())


def test_other_concepts_threshold_or_model_are_refused_not_mixed(folder, tmp_path):
    source = folder_source(folder, max_pixels=10**6)
    out = tmp_path / "out.json"
    with pytest.raises(StopError):
        _run(PixelConcepts(), source, "cat", out, after_image=lambda key: (_ for _ in ()).throw(StopError()))
    for spec, threshold, expected in (("cat;dog", 0.5, "(concepts cat=cat instead of cat=cat;dog=dog)"),
                                      ("cat", 0.4, "(threshold 0.5 instead of 0.4)")):
        with pytest.raises(LabelAnythingError, match="--restart") as info:
            _run(PixelConcepts(), source, spec, out, threshold=threshold)
        assert expected in str(info.value) and "\n" not in str(info.value)
    other = PixelConcepts()
    other.info = ModelInfo("pixels", "concepts", "cd" * 32, "cpu")
    with pytest.raises(LabelAnythingError, match="model pixels-concepts-abababababab instead of "
                                                 "pixels-concepts-cdcdcdcdcdcd"):
        _run(other, source, "cat", out)
    report = _run(PixelConcepts(), source, "cat;dog", out, restart=True)
    assert report.images_resumed == 0 and report.images_done == 3


def test_an_image_edited_since_its_record_is_done_again(folder, tmp_path):
    source = folder_source(folder, max_pixels=10**6)
    out = tmp_path / "out.json"
    with pytest.raises(StopError):
        _run(PixelConcepts(), source, "cat", out, after_image=lambda key: (_ for _ in ()).throw(StopError()))
    Image.fromarray(_picture(5)).save(folder / "a.png")  # the finished image, changed on disk
    model = PixelConcepts()
    report = _run(model, folder_source(folder, max_pixels=10**6), "cat", out)
    assert report.images_done == 3 and report.images_resumed == 0
    fresh = tmp_path / "fresh.json"
    _run(PixelConcepts(), folder_source(folder, max_pixels=10**6), "cat", fresh)
    assert json.loads(out.read_text()) == json.loads(fresh.read_text())


def test_embeddings_precompute_cached_are_not_encoded_again(folder, tmp_path):
    model = PixelConcepts()
    cache = EmbeddingCache(max_memory_bytes=0, disk_dir=tmp_path / "cache" / "embeddings")
    for name in ("a.png", "z.png"):
        pixels = np.asarray(Image.open(folder / name).convert("RGB"))
        digest = image_digest(pixels)
        cache.put(cache_key(model.info.model_id, digest), model.encode(pixels, digest))
    model.encoded.clear()
    report = _run(model, folder_source(folder, max_pixels=10**6), "cat", tmp_path / "out.json", cache=cache)
    assert (report.encoded, report.from_cache, len(model.encoded)) == (1, 2, 1)


def test_output_feeds_import_coco(folder, tmp_path):
    from label_studio_sdk.converter.brush import decode_rle

    from label_anything.app.import_coco import coco_to_tasks, label_config_for, names_from_label_config

    out = tmp_path / "out.json"
    _run(PixelConcepts(), folder_source(folder, max_pixels=10**6), "animal=cat;person", out, threshold=0.0)
    coco = json.loads(out.read_text())
    names = [c["name"] for c in coco["categories"]]
    # a project whose config import-coco would write takes every category
    assert names_from_label_config(label_config_for(names), "image", names)["brush_control"] == "brush"
    tasks = coco_to_tasks(coco, folder, local_files_root=folder.parent)
    api = pycocotools_coco.COCO(str(out))
    assert [t["data"]["image"] for t in tasks] == [f"/data/local-files/?d=images/{p}" for p in
                                                   ("a.png", "sub/b%20c.png", "z.png")]
    for task in tasks:
        img = api.imgs[task["data"]["coco_image_id"]]
        anns = api.imgToAnns[img["id"]]
        prediction = task["predictions"][0]
        brushes = [r for r in prediction["result"] if r["type"] == "brushlabels"]
        rects = [r for r in prediction["result"] if r["type"] == "rectanglelabels"]
        assert len(brushes) == len(rects) == len(anns)
        for brush, rect, ann in zip(brushes, rects, anns, strict=True):
            decoded = np.asarray(decode_rle(brush["value"]["rle"])).reshape(img["height"], img["width"], 4)[..., 3]
            np.testing.assert_array_equal(decoded > 0, api.annToMask(ann).astype(bool))
            assert brush["score"] == rect["score"] == ann["score"]
            assert brush["value"]["brushlabels"] == [api.cats[ann["category_id"]]["name"]]
        assert prediction["score"] == pytest.approx(np.mean([a["score"] for a in anns]))


def test_a_label_studio_project_is_read_as_precompute_reads_it(http_stub, tmp_path, monkeypatch):
    import io

    from label_anything.app.concepts_to_masks import project_source
    from label_anything.imaging.fetch import ImageFetcher

    monkeypatch.delenv("LABEL_ANYTHING_ALLOW_IMAGE_HOSTS", raising=False)
    ls = http_stub()
    pngs = []
    for seed in range(3):
        buf = io.BytesIO()
        Image.fromarray(_picture(seed)).save(buf, "PNG")
        pngs.append(buf.getvalue())
    tasks = [{"id": 11, "data": {"image": "/data/upload/3/a.png", "caption": "a cat"}},
             {"id": 12, "data": {"image": "http://elsewhere.invalid/b.png"}},  # a host not allowed
             {"id": 13, "data": {"image": "/data/upload/3/gone.png"}},  # 404
             {"id": 14, "data": {"left": "/data/upload/3/c.png", "right": "/data/upload/3/d.png"}}]
    ls.routes["/api/tasks"] = (200, {"Content-Type": "application/json"},
                               json.dumps({"tasks": tasks, "total": len(tasks)}).encode())
    for name, data in zip(("a", "c", "d"), pngs, strict=True):
        ls.routes[f"/data/upload/3/{name}.png"] = (200, {"Content-Type": "image/png"}, data)
    fetcher = ImageFetcher(ls.url, "secret", None)
    try:
        source = project_source(3, fetcher)
        report = _run(PixelConcepts(), source, "cat", tmp_path / "out.json")
    finally:
        fetcher.close()
    assert report.skipped == {"image not allowed": 1, "image unreadable": 1} and report.images_done == 3
    images = json.loads((tmp_path / "out.json").read_text())["images"]
    assert [(i["id"], i["file_name"], i["ls_task_id"], i["ls_data_key"]) for i in images] == [
        (1, "/data/upload/3/a.png", 11, "image"), (2, "/data/upload/3/c.png", 14, "left"),
        (3, "/data/upload/3/d.png", 14, "right")]


class PicklingPool:
    """``RayPool``'s interface without Ray: each call's arguments and result travel through pickle, as to and
    from a worker; two workers take turns."""

    def __init__(self, model) -> None:
        self.model, self.model_id, self.sent = model, model.info.model_id, []

    def map(self, fn, calls):
        import pickle

        for n, (tag, args) in enumerate(calls):
            args = pickle.loads(pickle.dumps(args))
            self.sent.append(type(args[0]).__name__)
            yield tag, f"host:{n % 2}", pickle.loads(pickle.dumps(fn(self.model, *args)))


def test_a_pool_gives_what_a_local_run_gives(folder, tmp_path):
    model = PixelConcepts()
    model.info = ModelInfo("sam3", "pixels", "ab" * 32, "cpu")  # the pool's workers must run SAM 3
    cache = EmbeddingCache(max_memory_bytes=0, disk_dir=tmp_path / "cache" / "embeddings")
    pixels = np.asarray(Image.open(folder / "z.png").convert("RGB"))
    cache.put(cache_key(model.info.model_id, image_digest(pixels)), model.encode(pixels, image_digest(pixels)))
    source = folder_source(folder, max_pixels=10**6)
    _run(model, source, "cat;person", tmp_path / "local.json", cache=cache)
    pool = PicklingPool(model)
    report = concepts_to_masks(None, source, concept_set(parse_concepts("cat;person")), tmp_path / "pool.json",
                               pool=pool, cache=cache, progress=False)
    assert (tmp_path / "local.json").read_text() == (tmp_path / "pool.json").read_text()
    assert pool.sent == ["ndarray", "ndarray", "Embedding"]  # the cached embedding goes to the worker
    assert report.workers == {"host:0": 2, "host:1": 1} and report.from_cache == 1
    pool.model_id = "mobile_sam-vit_t-0123456789ab"
    with pytest.raises(LabelAnythingError, match="needs SAM 3"):
        concepts_to_masks(None, source, concept_set(parse_concepts("cat")), tmp_path / "o.json", pool=pool)


# -- the command line: mistakes are one line and exit 2, without SAM 3 ---------------------------------
def _error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_a_model_that_cannot_answer_concepts_is_one_line(folder, tmp_path, capsys):
    base = ["concepts-to-masks", "--images", str(folder), "--out", str(tmp_path / "o.json"), "--concept", "cat"]
    assert "needs SAM 3" in _error([*base, "--model-name", "classical"], capsys)
    assert "needs SAM 3" in _error([*base, "--model-name", "mobile_sam"], capsys)
    assert "needs SAM 3" in _error([*base, "--model-name", "auto", "--cache-dir", str(tmp_path)], capsys)


def test_missing_concepts_sources_and_duplicates_are_one_line(folder, tmp_path, capsys):
    out = ["--out", str(tmp_path / "o.json"), "--model-name", "sam3", "--checkpoint", __file__]
    assert "no concepts" in _error(["concepts-to-masks", "--images", str(folder), *out], capsys)
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}]}))
    assert "no concepts" in _error(["concepts-to-masks", str(bare), "--images", str(folder), *out], capsys)
    assert "given twice" in _error(["concepts-to-masks", "--images", str(folder), "--concept", "cat",
                                    "--concepts", "dog;cat=kitten", *out], capsys)
    assert "one way" in _error(["concepts-to-masks", "--images", str(folder), "--project", "3", "--concept", "cat",
                                *out], capsys)
    assert "where the images are" in _error(["concepts-to-masks", "--concept", "cat", *out], capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no image files" in _error(["concepts-to-masks", "--images", str(empty), "--concept", "c", *out], capsys)
    (tmp_path / "list.json").write_text("[1, 2]")
    assert "not a COCO" in _error(["concepts-to-masks", str(tmp_path / "list.json"), "--images", str(folder),
                                   "--concept", "c", *out], capsys)


@pytest.mark.parametrize("flag, value, words", [
    ("--concepts", "=cat", "needs a name"),
    ("--concepts", "person=a=b", "one '='"),
    ("--concepts", "cat;cat=feline", "is given twice"),
    ("--concepts", ";;", "names no category"),
    ("--concept", "car=car,car", "given twice"),
    ("--concept", "x=" + "y" * 201, "short phrase"),
    ("--concept-threshold", "1.5", "from 0 to 1"),
])
def test_bad_concept_syntax_is_a_usage_error(folder, tmp_path, capsys, flag, value, words):
    with pytest.raises(SystemExit) as info:
        main(["concepts-to-masks", "--images", str(folder), "--out", str(tmp_path / "o.json"), flag, value])
    err = capsys.readouterr().err
    assert info.value.code == 2 and words in err and err.count("\n") == 1, err


def test_parsed_concepts_keep_their_order():
    concepts = concept_set([*parse_concepts("person = person, pedestrian ; car"), *parse_concepts("red  car")])
    assert isinstance(concepts, ConceptSet)
    assert concepts.queries() == [("person", "person"), ("person", "pedestrian"), ("car", "car"),
                                  ("red car", "red car")]


# -- SAM 3 -----------------------------------------------------------------------------------------------
SAM3_CONCEPTS = "cat;dog"
SAM3_NAMES = ("chelsea.png", "mirror.png", "more/chelsea copy.png")


@pytest.fixture(scope="module")
def sam3_images(tmp_path_factory, chelsea, sam3_model, sam3_chelsea_embedding, sam3_cache_dir) -> tuple[Path, dict]:
    """(folder, {file name: float32 embedding}): chelsea, chelsea mirrored and a copy of chelsea (PNG: the
    pixels, hence the digest, are exact), plus an undecodable file. All are in ``sam3_cache_dir`` before any
    run. The mirror's entry is chelsea's features mirrored (a distinct, deterministic embedding without a
    second 30-50 s encode): the runs must take each image's own entry, and encode none."""
    folder = tmp_path_factory.mktemp("sam3-set")
    (folder / "more").mkdir()
    mirror = np.ascontiguousarray(chelsea[:, ::-1])
    for name, pixels in zip(SAM3_NAMES, (chelsea, mirror, chelsea), strict=True):
        Image.fromarray(pixels).save(folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    mirrored = Embedding(sam3_chelsea_embedding.model_id, image_digest(mirror), mirror.shape[:2],
                         sam3_chelsea_embedding.input_size,
                         {k: np.ascontiguousarray(a[..., ::-1]) for k, a in sam3_chelsea_embedding.arrays.items()})
    cache = EmbeddingCache(disk_dir=sam3_cache_dir / "embeddings", max_disk_bytes=2**31)
    cache.put(cache_key(sam3_model.info.model_id, mirrored.image_digest), mirrored)
    return folder, {"chelsea.png": sam3_chelsea_embedding, "mirror.png": mirrored,
                    "more/chelsea copy.png": sam3_chelsea_embedding}


@pytest.fixture(scope="module")
def sam3_reference(sam3_model, sam3_images, sam3_cache_dir, tmp_path_factory):
    """An uninterrupted run in this process, from the cache as the command reads it."""
    from label_anything.testing.sam3_checkpoint import RANDOM_SAM3_SCORE_THRESHOLD

    folder, _ = sam3_images
    out = tmp_path_factory.mktemp("sam3-reference") / "reference.json"
    cache = EmbeddingCache(max_memory_bytes=0, disk_dir=sam3_cache_dir / "embeddings", max_disk_bytes=2**31)
    t0 = time.perf_counter()
    report = _run(sam3_model, folder_source(folder), SAM3_CONCEPTS, out, threshold=RANDOM_SAM3_SCORE_THRESHOLD,
                  cache=cache)
    print(f"SAM 3 reference run: {time.perf_counter() - t0:.1f} s")
    return out, report


def _iou(a, b) -> np.ndarray:
    return np.asarray(coco_mask.iou(a, b, [0] * len(b))).reshape(len(a), len(b))


@pytest.mark.slow
def test_sam3_output_equals_find_instances_on_each_image(sam3_model, sam3_images, sam3_reference):
    from label_anything.geometry.masks import mask_to_coco_rle
    from label_anything.testing.sam3_checkpoint import RANDOM_SAM3_SCORE_THRESHOLD

    _, embeddings = sam3_images
    out, report = sam3_reference
    assert report.skipped == {"image unreadable": 1} and report.encoded == 0 and report.from_cache == 3
    api = pycocotools_coco.COCO(str(out))
    categories = {c["name"]: c["id"] for c in api.dataset["categories"]}
    assert list(categories) == ["cat", "dog"]
    by_image = _masks_by_image(api)
    assert sorted(by_image) == sorted(SAM3_NAMES)
    for name, embedding in embeddings.items():
        for phrase in ("cat", "dog"):
            found = sam3_model.find_instances(embedding, ConceptPrompt(text=phrase,
                                                                       threshold=RANDOM_SAM3_SCORE_THRESHOLD))
            keep = [k for k in range(len(found)) if found.masks[k].any()]
            expected = [mask_to_coco_rle(found.masks[k]) for k in keep]
            anns = [a for a in by_image[name] if a["concept"] == phrase]
            assert {a["category_id"] for a in anns} == {categories[phrase]}
            assert len(anns) == len(expected) > 0
            for ann in anns:  # pycocotools decodes what it wrote
                assert api.annToMask(ann).sum() == ann["area"]
            iou = _iou([a["segmentation"] for a in anns], expected)
            used: set[int] = set()
            for j, k in enumerate(keep):  # float16 cache vs float32: match by mask, then compare scores
                candidates = [i for i in np.argsort(-iou[:, j]) if i not in used and iou[i, j] >= 0.999
                              and abs(anns[i]["score"] - float(found.scores[k])) <= 1e-3]
                assert candidates, f"{name} {phrase}: instance {k} (score {found.scores[k]:.4f}) has no match"
                used.add(candidates[0])


def _records(sidecar: Path) -> list[str]:
    """The image keys of the newline-ended records after the header."""
    if not sidecar.exists():
        return []
    keys = []
    for line in sidecar.read_bytes().split(b"\n")[1:-1]:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            keys.append(json.loads(line)["image"])
    return keys


def _queried(log: Path) -> list[str]:
    return [line.split(QUERYING, 1)[1].rsplit(" (", 1)[0] for line in log.read_text(errors="replace").splitlines()
            if QUERYING in line]


@pytest.mark.slow
def test_sam3_command_killed_resumes_to_the_uninterrupted_output(sam3_checkpoint, sam3_images,
                                                                        sam3_cache_dir, sam3_reference, tmp_path):
    from label_anything.testing.sam3_checkpoint import RANDOM_SAM3_SCORE_THRESHOLD

    folder, _ = sam3_images
    out = tmp_path / "out.json"
    sidecar = partial_path(out)
    argv = [sys.executable, "-m", "label_anything", "--log-level", "DEBUG", "concepts-to-masks", "--images",
            str(folder), "--out", str(out), "--concepts", SAM3_CONCEPTS, "--concept-threshold",
            str(RANDOM_SAM3_SCORE_THRESHOLD), "--model-name", "sam3", "--checkpoint", str(sam3_checkpoint),
            "--cache-dir", str(sam3_cache_dir), "--device", "cpu", "--no-progress"]
    log = tmp_path / "killed.log"
    with log.open("wb") as f:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=f)
    deadline = time.monotonic() + 400
    while process.poll() is None and not _records(sidecar) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert process.poll() is None, log.read_text()[-3000:]  # still running: killed with images to go
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not out.exists()
    # as if the kill had come while the next record was being written: a record cut at a random byte
    data = sidecar.read_bytes()
    last = data.rindex(b"\n", 0, len(data) - 1) + 1
    torn = data[last:][: random.Random(5).randint(1, len(data) - last - 2)]
    sidecar.write_bytes(data + torn)
    kept = set(_records(sidecar))
    assert 1 <= len(kept) < 3
    log = tmp_path / "final.log"
    with log.open("wb") as f:
        final = subprocess.run(argv, stdout=subprocess.PIPE, stderr=f, timeout=400)
    assert final.returncode == 0, log.read_text()[-3000:]
    queried = _queried(log)
    assert not set(queried) & kept and len(queried) == len(set(queried)) == 3 - len(kept)
    summary = json.loads(final.stdout)
    assert summary["encoded"] == 0 and summary["skipped"] == {"image unreadable": 1}
    assert summary["images_resumed"] == len(kept) and summary["images"] == 3
    assert json.loads(out.read_text()) == json.loads(sam3_reference[0].read_text())
    assert not sidecar.exists()
