"""Label Studio export → COCO / YOLO-seg / MMDetection config / previews, on synthetic exports.

Exports are built the way Label Studio writes them: brush regions with ``brush_rle_encode`` (byte-identical
to label_studio_sdk's encoder) of real shapes from scikit-image, polygons and rectangles in percent.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from pycocotools import mask as coco_mask

from label_anything.app.convert.dataset import StrictError, convert, split_ids
from label_anything.app.convert.images import ImageLocator
from label_anything.app.convert.mmdet import TEMPLATES, render_config
from label_anything.errors import LabelAnythingError
from label_anything.geometry.masks import polygons_to_mask
from label_anything.labelstudio.rle import brush_rle_encode

skdata = pytest.importorskip("skimage.data")

ROOT = Path(__file__).resolve().parents[1]


# -- building exports -------------------------------------------------------------------------------------
def horse() -> np.ndarray:
    return ~skdata.horse().astype(bool)  # (328, 400): the silhouette is dark


def coins() -> np.ndarray:
    # Several parts with holes: the bright coins of a real photo.
    return skdata.coins()[::2, ::2] > 110  # (152, 192)


def donut(h: int = 120, w: int = 160) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - h / 2, xx - w / 2)
    return (r < 50) & (r > 20)


def brush(mask: np.ndarray, label: str, rid: str = "b1") -> dict[str, Any]:
    h, w = mask.shape
    return {"id": rid, "type": "brushlabels", "from_name": "tag", "to_name": "image", "original_width": w,
            "original_height": h, "image_rotation": 0,
            "value": {"format": "rle", "rle": brush_rle_encode(mask), "brushlabels": [label]}}


def polygon(points_px: list[tuple[float, float]], w: int, h: int, label: str, rid: str = "p1") -> dict[str, Any]:
    pts = [[x * 100 / w, y * 100 / h] for x, y in points_px]
    return {"id": rid, "type": "polygonlabels", "from_name": "poly", "to_name": "image", "original_width": w,
            "original_height": h, "value": {"points": pts, "closed": True, "polygonlabels": [label]}}


def rectangle(x: float, y: float, bw: float, bh: float, w: int, h: int, label: str, rid: str = "r1") -> dict:
    return {"id": rid, "type": "rectanglelabels", "from_name": "rect", "to_name": "image", "original_width": w,
            "original_height": h, "value": {"x": x * 100 / w, "y": y * 100 / h, "width": bw * 100 / w,
                                            "height": bh * 100 / h, "rotation": 0, "rectanglelabels": [label]}}


def task(tid: int, image: str, *results_lists: list[dict], cancelled: tuple[int, ...] = (), **extra) -> dict:
    annotations = [
        {"id": tid * 10 + k, "result": results, "was_cancelled": k in cancelled,
         "created_at": f"2024-01-0{k + 1}T10:00:00.000000Z", "updated_at": f"2024-01-0{k + 1}T10:00:00.000000Z"}
        for k, results in enumerate(results_lists)
    ]
    return {"id": tid, "data": {"image": image}, "annotations": annotations, "predictions": [], **extra}


def save_image(folder: Path, name: str, w: int, h: int) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(name))
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def write_export(path: Path, tasks: list[dict]) -> Path:
    path.write_text(json.dumps(tasks), encoding="utf-8")
    return path


def run(tmp: Path, tasks: list[dict], **kwargs) -> tuple[dict, Any]:
    export = write_export(tmp / "export.json", tasks)
    out = tmp / "out"
    if "locator" not in kwargs:
        kwargs["locator"] = ImageLocator(tmp / "imgs", upload_dir=tmp / "none", download=False)
    kwargs.setdefault("progress", False)
    result = convert(export, out, **kwargs)
    ann = out / "annotations" / "ann.json"
    return (json.loads(ann.read_text(encoding="utf-8")) if ann.exists() else {}), result


@pytest.fixture
def imgs(tmp_path: Path) -> Path:
    (tmp_path / "imgs").mkdir()
    return tmp_path / "imgs"


# -- COCO RLE: pixel-exact -------------------------------------------------------------------------------
def decode(ann: dict) -> np.ndarray:
    return coco_mask.decode(coco_mask.frPyObjects(ann["segmentation"], *ann["segmentation"]["size"])) \
        if isinstance(ann["segmentation"]["counts"], list) else coco_mask.decode(
            {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()})


def test_brush_round_trip_real_shapes_pixel_exact(tmp_path: Path, imgs: Path) -> None:
    shapes = {"horse": horse(), "coins": coins(), "donut": donut()}
    tasks = []
    for i, (name, mask) in enumerate(shapes.items(), start=1):
        h, w = mask.shape
        save_image(imgs, f"{name}.png", w, h)
        tasks.append(task(i, f"/data/upload/1/{name}.png", [brush(mask, name)]))
    coco, result = run(tmp_path, tasks)
    assert [c["name"] for c in coco["categories"]] == ["horse", "coins", "donut"]
    assert len(coco["annotations"]) == 3
    for ann, (name, mask) in zip(coco["annotations"], shapes.items(), strict=True):
        img = next(i for i in coco["images"] if i["id"] == ann["image_id"])
        assert (img["height"], img["width"]) == mask.shape
        decoded = decode(ann).astype(bool)
        assert np.array_equal(decoded, mask), name
        assert ann["area"] == int(mask.sum())
        assert ann["iscrowd"] == 0
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
        assert coco_mask.area(coco_mask.frPyObjects(ann["segmentation"], *mask.shape)) == mask.sum() \
            if isinstance(ann["segmentation"]["counts"], list) else True
    assert not result.tally.dropped


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays(bool, st.tuples(st.integers(1, 24), st.integers(1, 24)), elements=st.booleans()))
def test_brush_round_trip_random_masks(mask: np.ndarray) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "imgs").mkdir()
        coco, result = run(tmp, [task(1, "http://example.com/x.png", [brush(mask, "thing")])])
        if not mask.any():
            assert coco["annotations"] == [] and result.tally.dropped["empty brush mask"] == 1
            return
        [ann] = coco["annotations"]
        assert np.array_equal(decode(ann).astype(bool), mask)
        assert ann["area"] == int(mask.sum())


# -- polygons ----------------------------------------------------------------------------------------------
def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def blobs() -> np.ndarray:
    yy, xx = np.mgrid[:200, :300]
    spots = [(50, 50, 30), (120, 200, 45), (160, 60, 20), (40, 250, 10)]
    return np.any([np.hypot(yy - cy, xx - cx) < r for cy, cx, r in spots], axis=0)


def test_coco_polygon_of_real_shapes_iou(tmp_path: Path, imgs: Path) -> None:
    shapes = {"horse": horse(), "coins": coins(), "donut": donut(), "blobs": blobs()}
    tasks = [task(i, f"/x/{n}.png", [brush(m, n)]) for i, (n, m) in enumerate(shapes.items(), start=1)]
    coco, _ = run(tmp_path, tasks, fmt="coco-polygon")
    exact, _ = run(tmp_path, tasks, fmt="coco-polygon", tolerance=0.0)
    for ann, ann0, (name, mask) in zip(coco["annotations"], exact["annotations"], shapes.items(), strict=True):
        seg = ann["segmentation"]
        assert isinstance(seg, list) and all(len(p) >= 6 and len(p) % 2 == 0 for p in seg)
        back = polygons_to_mask(seg, *mask.shape)
        # A thresholded photo (coins) has ragged 1-pixel edges that a 1-pixel simplification smooths away.
        assert iou(back, mask) >= (0.95 if name == "coins" else 0.98), name
        assert np.array_equal(polygons_to_mask(ann0["segmentation"], *mask.shape), mask), name
        assert ann["area"] == int(mask.sum())  # the painted pixels, not the box
    donut_ann = coco["annotations"][2]
    assert not polygons_to_mask(donut_ann["segmentation"], 120, 160)[60, 80]  # the hole stays a hole
    assert len(coco["annotations"][1]["segmentation"]) > 1  # several coins, several polygons


def test_polygonlabels_in_percent(tmp_path: Path, imgs: Path) -> None:
    w, h = 200, 100
    pts = [(20.0, 10.0), (120.0, 10.0), (120.0, 60.0), (20.0, 60.0)]
    tasks = [task(1, "/x/a.png", [polygon(pts, w, h, "plate")])]
    coco_rle, _ = run(tmp_path, tasks)
    [ann] = coco_rle["annotations"]
    assert ann["area"] == 100 * 50 and ann["bbox"] == [20.0, 10.0, 100.0, 50.0]
    coco_poly, _ = run(tmp_path, tasks, fmt="coco-polygon")
    [ann] = coco_poly["annotations"]
    assert np.allclose(ann["segmentation"][0], [20, 10, 120, 10, 120, 60, 20, 60])
    assert ann["area"] == 5000


# -- rectangles, choices, strictness -----------------------------------------------------------------------
def test_rectangles_and_unsupported(tmp_path: Path, imgs: Path) -> None:
    w, h = 100, 80
    choice = {"id": "c", "type": "choices", "from_name": "c", "to_name": "image", "value": {"choices": ["ok"]}}
    tasks = [task(1, "/x/a.png", [rectangle(10, 20, 30, 40, w, h, "car"), choice])]
    coco, result = run(tmp_path, tasks)
    assert coco["annotations"] == []  # masks only: the box is in boxes.json
    [ann] = json.loads((tmp_path / "out/annotations/boxes.json").read_text())["annotations"]
    assert ann["bbox"] == [10.0, 20.0, 30.0, 40.0] and ann["area"] == 1200
    assert result.tally.dropped["unsupported result type 'choices'"] == 1
    coco, result = run(tmp_path, tasks, skip_boxes=True)
    assert coco["annotations"] == [] and result.tally.skipped["box-only region (--skip-boxes)"] == 1
    assert not (tmp_path / "out/annotations/boxes.json").exists()  # not left over from the run before
    assert "not converted: 1 × unsupported result type 'choices'" in result.summary()


def test_strict_writes_no_annotation_file(tmp_path: Path, imgs: Path) -> None:
    tasks = [task(1, "/data/upload/1/missing.png", [brush(donut(), "d")])]
    with pytest.raises(StrictError, match="image not found"):
        run(tmp_path, tasks, strict=True)
    leftovers = list((tmp_path / "out" / "annotations").iterdir())
    assert leftovers == []  # no ann.json, no spool, no temp file
    coco, result = run(tmp_path, tasks)  # not strict: converted, the missing image counted
    assert len(coco["annotations"]) == 1 and result.tally.images_dropped and result.tally.losses() == 1
    assert "image not found" in result.summary()


# -- annotations, tasks, names -----------------------------------------------------------------------------
def test_annotation_choice_cancelled_and_empty_tasks(tmp_path: Path, imgs: Path) -> None:
    m = donut()
    h, w = m.shape
    save_image(imgs, "empty.png", 64, 48)
    old, new = [brush(m, "old")], [brush(m, "new"), rectangle(1, 1, 5, 5, w, h, "new", "r")]
    tasks = [
        task(5, "/x/a.png", old, new),  # newest (2nd) wins
        task(6, "/x/b.png", new, old, cancelled=(1,)),  # the newer one is cancelled
        task(7, "/x/empty.png"),  # no annotation: an image without annotations
        {"id": 8, "data": {"image": "/x/c.png"}, "annotations": [], "predictions": [{"result": [brush(m, "p")]}]},
    ]
    coco, result = run(tmp_path, tasks)
    assert [i["id"] for i in coco["images"]] == [5, 6, 7, 8]
    assert next(i for i in coco["images"] if i["id"] == 7)[("width")] == 64  # size from the file
    by_image = {i: [a for a in coco["annotations"] if a["image_id"] == i] for i in (5, 6, 7, 8)}
    names = {c["id"]: c["name"] for c in coco["categories"]}
    assert [names[a["category_id"]] for a in by_image[5]] == ["new"]  # and its box, in boxes.json
    assert [names[a["category_id"]] for a in by_image[6]] == ["new"]
    assert by_image[7] == [] and by_image[8] == []
    assert result.tally.skipped["region of a cancelled annotation"] == 1
    assert sum(v for k, v in result.tally.skipped.items() if "older annotation" in k) == 1
    assert result.tally.skipped["region of a prediction (only annotations are exported)"] == 1
    coco, _ = run(tmp_path, tasks, all_annotations=True, boxes_as_masks=True)
    assert len([a for a in coco["annotations"] if a["image_id"] == 5]) == 3


def test_unicode_and_space_names_survive(tmp_path: Path, imgs: Path) -> None:
    save_image(imgs, "1/ab12cd34-my könig.png", 160, 120)
    save_image(imgs, "ordner/страница 1.png", 160, 120)
    tasks = [task(1, "/data/upload/1/ab12cd34-my%20k%C3%B6nig.png", [brush(donut(), "猫")]),
             task(2, "/data/local-files/?d=ordner/%D1%81%D1%82%D1%80%D0%B0%D0%BD%D0%B8%D1%86%D0%B0%201.png")]
    coco, result = run(tmp_path, tasks)
    assert [i["file_name"] for i in coco["images"]] == ["ab12cd34-my könig.png", "страница 1.png"]
    assert (tmp_path / "out/images/ab12cd34-my könig.png").is_file()
    assert (tmp_path / "out/images/страница 1.png").is_file()
    assert coco["categories"][0]["name"] == "猫" and result.n_images_copied == 2
    assert "classes = ('猫',)" in result.summary()


def test_class_order(tmp_path: Path, imgs: Path) -> None:
    m = donut()
    tasks = [task(1, "/x/a.png", [brush(m, "b", "1"), brush(m, "a", "2"), brush(m, "c", "3")])]
    coco, _ = run(tmp_path, tasks)
    assert [c["name"] for c in coco["categories"]] == ["b", "a", "c"]
    coco, _ = run(tmp_path, tasks, config_labels=["c", "b", "a", "z"])
    assert [c["name"] for c in coco["categories"]] == ["c", "b", "a", "z"]
    coco, result = run(tmp_path, tasks, classes=["a", "b"])
    assert [c["name"] for c in coco["categories"]] == ["a", "b"] and len(coco["annotations"]) == 2
    assert result.tally.dropped["label not in --classes"] == 1


def test_val_split_deterministic(tmp_path: Path, imgs: Path) -> None:
    tasks = [task(i, f"/x/{i}.png", [brush(donut(), "d")]) for i in range(1, 21)]
    _, result = run(tmp_path, tasks, val_ratio=0.25)
    ann_dir = tmp_path / "out" / "annotations"
    train = json.loads((ann_dir / "train.json").read_text())
    val = json.loads((ann_dir / "val.json").read_text())
    assert len(val["images"]) == 5 and len(train["images"]) == 15
    assert {i["id"] for i in train["images"]}.isdisjoint({i["id"] for i in val["images"]})
    assert {a["image_id"] for a in val["annotations"]} == {i["id"] for i in val["images"]}
    assert split_ids({i: f"{i}.png" for i in range(1, 21)}, 0.25) == result.splits
    assert split_ids({1: "a", 2: "b"}, 0.01)["val"]  # tiny ratio still validates on one image


# -- YOLO-seg ----------------------------------------------------------------------------------------------
def test_yolo_seg_format(tmp_path: Path, imgs: Path) -> None:
    c = coins()
    h, w = c.shape
    save_image(imgs, "coins.jpg", w, h)
    tasks = [task(1, "/x/coins.jpg", [brush(c, "coin"), rectangle(5, 5, 20, 10, w, h, "box", "r")]),
             task(2, "/x/none.jpg")]
    tasks[1]["annotations"] = [{"id": 3, "result": [polygon([(1, 1), (50, 1), (50, 40)], w, h, "tri")]}]
    _, _result = run(tmp_path, tasks, fmt="yolo-seg", val_ratio=0.5, boxes_as_masks=True)
    out = tmp_path / "out"
    lines = (out / "labels" / "coins.txt").read_text().splitlines()
    assert len(lines) == 2
    for line in lines:
        parts = line.split()
        assert parts[0].isdigit() and (len(parts) - 1) % 2 == 0 and len(parts) >= 7
        coords = np.array(parts[1:], dtype=float)
        assert ((coords >= 0) & (coords <= 1)).all()
    xy = np.array(lines[0].split()[1:], dtype=float).reshape(-1, 2) * [w, h]
    assert iou(polygons_to_mask([xy], h, w), c) >= 0.95  # all coins joined into one line (ragged edges)
    assert lines[1].startswith("1 ")
    assert (out / "labels" / "none.txt").read_text().startswith("2 ")
    yaml = (out / "data.yaml").read_text()
    assert 'names:\n  0: "coin"\n  1: "box"\n  2: "tri"' in yaml and "nc: 3" in yaml
    assert 'train: "train.txt"' in yaml and 'val: "val.txt"' in yaml
    listed = (out / "train.txt").read_text().split() + (out / "val.txt").read_text().split()
    assert sorted(listed) == ["./images/coins.jpg", "./images/none.jpg"]
    yaml_mod = pytest.importorskip("yaml")
    assert yaml_mod.safe_load(yaml)["names"] == {0: "coin", 1: "box", 2: "tri"}


# -- MMDetection -------------------------------------------------------------------------------------------
def exec_config(text: str) -> dict:
    ast.parse(text)
    namespace: dict = {}
    exec(compile(text, "cfg.py", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("model", sorted(TEMPLATES))
def test_mmdet_config(tmp_path: Path, imgs: Path, model: str) -> None:
    tasks = [task(i, f"/x/{i}.png", [brush(donut(), "cat" if i % 2 else "dog")]) for i in range(1, 7)]
    _, result = run(tmp_path, tasks, val_ratio=0.3, mmdet_config=model)
    path = tmp_path / "out" / f"{model}_custom.py"
    assert path in result.files
    cfg = exec_config(path.read_text())
    assert cfg["classes"] == ("cat", "dog") and cfg["num_classes"] == 2
    assert cfg["train_dataloader"]["dataset"]["ann_file"] == "annotations/train.json"
    assert cfg["val_dataloader"]["dataset"]["ann_file"] == "annotations/val.json"
    root = Path(cfg["data_root"])
    assert (root / cfg["train_ann_file"]).is_file() and (root / "images").is_dir()
    assert cfg["val_evaluator"]["ann_file"] == cfg["data_root"] + "annotations/val.json"
    heads = [cfg["model"]["roi_head"]["bbox_head"], cfg["model"]["roi_head"]["mask_head"]] \
        if model.startswith("mask") else [cfg["model"]["bbox_head"]]
    assert all(h["num_classes"] == 2 for h in heads)


def test_mmdet_config_loads_with_mmengine(tmp_path: Path) -> None:
    mmengine = pytest.importorskip("mmengine")
    for model in TEMPLATES:
        path = tmp_path / f"{model}.py"
        path.write_text(render_config(model, ["a", "b", "c"], tmp_path, train_ann="annotations/ann.json",
                                      val_ann="annotations/ann.json", split=False))
        cfg = mmengine.Config.fromfile(str(path))
        assert cfg.classes == ("a", "b", "c") and cfg.num_classes == 3


def test_mmdet_config_loads_with_external_mmengine(tmp_path: Path) -> None:
    """Same check with a Python that has mmengine (``LABEL_ANYTHING_MMENGINE_PYTHON``, e.g. a throwaway venv)."""
    import os

    python = os.environ.get("LABEL_ANYTHING_MMENGINE_PYTHON")
    if not python:
        pytest.skip("set LABEL_ANYTHING_MMENGINE_PYTHON to a python with mmengine installed")
    for model in TEMPLATES:
        path = tmp_path / f"{model}.py"
        path.write_text(render_config(model, ["a", "könig"], tmp_path, train_ann="annotations/train.json",
                                      val_ann="annotations/val.json", split=True))
        code = ("import sys, json; from mmengine import Config; c = Config.fromfile(sys.argv[1]); "
                "print(json.dumps([list(c.classes), c.num_classes, c.train_dataloader.dataset.ann_file]))")
        out = subprocess.run([python, "-c", code, str(path)], capture_output=True, text=True, timeout=120, check=True)
        assert json.loads(out.stdout) == [["a", "könig"], 2, "annotations/train.json"]


def test_mmdet_needs_coco(tmp_path: Path, imgs: Path) -> None:
    with pytest.raises(LabelAnythingError, match="COCO"):
        run(tmp_path, [task(1, "/x/a.png")], fmt="yolo-seg", mmdet_config="rtmdet-ins_s")


# -- finding images ----------------------------------------------------------------------------------------
def test_upload_dir_and_local_files_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path / "lsdata"
    save_image(base / "media" / "upload" / "3", "abc12345-cat 1.png", 160, 120)
    docroot = tmp_path / "docs"
    save_image(docroot, "sub/dog.png", 160, 120)
    monkeypatch.setenv("LABEL_STUDIO_BASE_DATA_DIR", str(base))
    monkeypatch.setenv("LOCAL_FILES_DOCUMENT_ROOT", str(docroot))
    tasks = [task(1, "/data/upload/3/abc12345-cat%201.png", [brush(donut(), "cat")]),
             task(2, "/data/local-files/?d=sub/dog.png", [brush(donut(), "dog")]),
             task(3, "/data/local-files/?d=../secret.png", [brush(donut(), "dog")])]
    save_image(tmp_path, "secret.png", 160, 120)
    _coco, result = run(tmp_path, tasks, locator=ImageLocator(download=False))
    assert result.n_images_copied == 2
    assert sorted(p.name for p in (tmp_path / "out/images").iterdir()) == ["abc12345-cat 1.png", "dog.png"]
    assert result.tally.images_dropped["image not found (use --images-root or LABEL_STUDIO_URL)"] == 1


@pytest.mark.parametrize("token_kind", ["pat", "legacy"])
def test_fetch_from_label_studio(tmp_path: Path, token_kind: str) -> None:
    import base64

    png = (tmp_path / "p.png")
    save_image(tmp_path, "p.png", 160, 120)
    payload = base64.urlsafe_b64encode(json.dumps({"token_type": "refresh"}).encode()).decode().rstrip("=")
    key = f"x.{payload}.y" if token_kind == "pat" else "legacy123"
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/token/refresh/":
            assert json.loads(request.content) == {"refresh": key}
            return httpx.Response(200, json={"access": "ACCESS"})
        seen.append(request.headers.get("authorization", ""))
        if request.url.host == "ls.test" and request.url.raw_path == b"/data/upload/1/cat%20x.png":
            return httpx.Response(200, content=png.read_bytes())
        if request.url.host == "cdn.test":
            return httpx.Response(200, content=png.read_bytes())
        return httpx.Response(404)

    locator = ImageLocator(upload_dir=tmp_path / "none", label_studio_url="http://ls.test", api_key=key,
                           transport=httpx.MockTransport(handler))
    tasks = [task(1, "/data/upload/1/cat%20x.png", [brush(donut(), "cat")]),
             task(2, "https://cdn.test/dog.png", [brush(donut(), "dog")])]
    _, result = run(tmp_path, tasks, locator=locator)
    assert result.n_images_copied == 2 and not result.tally.dropped
    assert seen[0] == ("Bearer ACCESS" if token_kind == "pat" else "Token legacy123")
    assert seen[1] == ""  # the key never goes to another host
    assert (tmp_path / "out/images/cat x.png").read_bytes() == png.read_bytes()


# -- preview, entry point, streaming -----------------------------------------------------------------------
def test_preview(tmp_path: Path, imgs: Path) -> None:
    """Masks are tinted where they are, boxes outlined where they are, and the rest of the photo is untouched."""
    from label_anything.app.convert.preview import class_colour, preview

    ring = donut()
    h, w = ring.shape
    for name in ("a.png", "b.png"):
        save_image(imgs, name, w, h)
    source = np.asarray(Image.open(imgs / "a.png").convert("RGB")).astype(int)
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - h / 2, xx - w / 2)
    inside = (r > 23) & (r < 47) & (yy > 40)  # the ring, away from its outline, box and label
    near_lines = (np.abs(xx - 30) <= 2) | (np.abs(xx - 129) <= 2) | (np.abs(yy - 109) <= 2)
    outside = (r > 56) & (yy > 30) & ~near_lines
    tasks = [task(1, "/x/a.png", [brush(ring, "ring"), rectangle(2, 2, 30, 20, w, h, "box", "r")]),
             task(2, "/x/b.png", [polygon([(10, 10), (90, 10), (50, 70)], w, h, "tri")])]
    for fmt in ("coco-rle", "yolo-seg"):
        run(tmp_path, tasks, fmt=fmt)
        info = preview(tmp_path / "out", tmp_path / f"pv-{fmt}")
        assert info["drawn"] == 2
        sheet = np.asarray(Image.open(info["sheet"]))
        assert sheet.shape[0] >= 256 and sheet.shape[1] >= 512
        drawn = np.asarray(Image.open(tmp_path / f"pv-{fmt}" / "a.png")).astype(int)
        assert drawn.shape == (h, w, 3)
        tinted = (0.5 * source + 0.5 * np.array(class_colour(0))).astype(np.uint8)
        np.testing.assert_array_equal(drawn[inside], tinted[inside])
        np.testing.assert_array_equal(drawn[outside], source[outside])
        if fmt == "coco-rle":  # the box-only region, from boxes.json: its left edge in its class colour
            assert (drawn[14:22, 2] == class_colour(1)).all()
            import shutil

            shutil.rmtree(tmp_path / "out")


def test_convert_command_subprocess(tmp_path: Path, imgs: Path) -> None:
    h, w = donut().shape
    save_image(imgs, "a.png", w, h)
    export = write_export(tmp_path / "e.json", [task(1, "/data/upload/9/a.png", [brush(donut(), "ring")])])
    cli = [sys.executable, "-m", "label_anything", "convert"]
    proc = subprocess.run(
        [*cli, str(export), "--to", "coco-polygon", "--out", str(tmp_path / "o"),
         "--images-root", str(imgs), "--no-download"],
        capture_output=True, text=True, cwd=ROOT, timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "classes = ('ring',)" in proc.stdout
    assert "convert" in proc.stderr  # the progress bar
    assert (tmp_path / "o/images/a.png").is_file()
    bad = subprocess.run([*cli, str(tmp_path / "nope.json"), "--out", str(tmp_path / "o2")],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "does not exist" in bad.stderr


def test_not_an_export(tmp_path: Path) -> None:
    (tmp_path / "e.json").write_text('{"images": []}')
    with pytest.raises(LabelAnythingError, match="not a Label Studio task"):
        convert(tmp_path / "e.json", tmp_path / "o", progress=False)
    (tmp_path / "e.json").write_text('[{"data": {"image": "a.png"}}, {"data"')
    with pytest.raises(LabelAnythingError, match="not valid JSON"):
        convert(tmp_path / "e.json", tmp_path / "o", progress=False, locator=ImageLocator(download=False))
    assert not (tmp_path / "o" / "annotations" / "ann.json").exists()


def test_brush_rle_of_another_size_is_a_counted_loss(tmp_path: Path, imgs: Path) -> None:
    """An RLE whose length does not match original_width × original_height: counted, never decoded wrong."""
    h, w = donut().shape
    save_image(imgs, "a.png", w, h)
    good = brush(donut(), "ring", rid="b1")
    bad = brush(np.ones((10, 10), dtype=bool), "ring", rid="b2")
    bad["original_width"], bad["original_height"] = w, h  # claims the image's size, holds 10x10 pixels
    coco, result = run(tmp_path, [task(1, "/data/upload/9/a.png", [good, bad])])
    assert len(coco["annotations"]) == 1
    assert sum(result.tally.dropped.values()) == 1
    assert any("rle" in reason.lower() or "brush" in reason.lower() for reason in result.tally.dropped)


# -- trust: defects of issue 13 ----------------------------------------------------------------------------
def smart_answer(mask: np.ndarray, label: str) -> list[dict]:
    """The regions the backend answers one smart click with (--out-mask --out-bbox --out-poly)."""
    from label_anything.labelstudio.context import Click
    from label_anything.labelstudio.results import OutputOptions, mask_results

    h, w = mask.shape
    click = Click(to_name="image", from_name="kp", label=label, width=w, height=h, rotation=0.0,
                  points=np.zeros((0, 2), np.float32), point_labels=np.zeros(0, np.int32), box=None)
    controls = {"brushlabels": "tag", "rectanglelabels": "rect", "polygonlabels": "poly"}
    return mask_results(mask, 0.9, click, controls, OutputOptions(mask=True, bbox=True, poly=True, poly_min_area=0))


def test_degenerate_polygon_is_counted_not_fatal(tmp_path: Path, imgs: Path) -> None:
    """Collinear and sub-pixel polygons cover no pixel: counted, and the rest of the export is converted."""
    h, w = donut().shape
    results = [brush(donut(), "ring"),
               polygon([(10, 10), (20, 20), (30, 30)], w, h, "ring", rid="line"),
               polygon([(5.1, 5.1), (5.3, 5.1), (5.2, 5.3)], w, h, "ring", rid="speck")]
    coco, result = run(tmp_path, [task(1, "/x/a.png", results)])
    assert len(coco["annotations"]) == 1
    assert result.tally.dropped["polygon region that covers no pixel"] == 2


def _loads_in_pycocotools(path: Path) -> list[np.ndarray]:
    from pycocotools.coco import COCO

    coco = COCO(str(path))
    return [coco.annToMask(a) for a in coco.loadAnns(coco.getAnnIds())]


@pytest.mark.parametrize("fmt", ["coco-rle", "coco-polygon"])
def test_box_only_regions_go_to_a_detection_file(tmp_path: Path, imgs: Path, fmt: str) -> None:
    """ann.json holds masks only (every annotation loads with annToMask); boxes go to boxes.json, counted."""
    h, w = donut().shape
    tasks = [task(1, "/x/a.png", [brush(donut(), "ring"), rectangle(10, 20, 30, 40, w, h, "car")])]
    coco, result = run(tmp_path, tasks, fmt=fmt)
    masks = _loads_in_pycocotools(tmp_path / "out/annotations/ann.json")
    assert len(masks) == 1 and iou(masks[0].astype(bool), donut()) > (0.999 if fmt == "coco-rle" else 0.95)
    assert result.tally.skipped["box-only region (no mask): written to annotations/boxes.json"] == 1
    boxes = json.loads((tmp_path / "out/annotations/boxes.json").read_text())
    [box] = boxes["annotations"]
    assert box["bbox"] == [10.0, 20.0, 30.0, 40.0] and box["area"] == 1200 and "segmentation" not in box
    assert box["id"] != coco["annotations"][0]["id"]  # the files can be merged later
    assert [c["name"] for c in boxes["categories"]] == [c["name"] for c in coco["categories"]]
    assert boxes["images"] == coco["images"]
    assert tmp_path / "out/annotations/boxes.json" in result.files


@pytest.mark.parametrize("fmt", ["coco-rle", "coco-polygon"])
def test_boxes_as_masks(tmp_path: Path, imgs: Path, fmt: str) -> None:
    h, w = donut().shape
    tasks = [task(1, "/x/a.png", [rectangle(10, 20, 30, 40, w, h, "car")])]
    _, result = run(tmp_path, tasks, fmt=fmt, boxes_as_masks=True)
    [mask] = _loads_in_pycocotools(tmp_path / "out/annotations/ann.json")
    expected = np.zeros((h, w), bool)
    expected[20:60, 10:40] = True
    assert np.array_equal(mask.astype(bool), expected)
    assert not (tmp_path / "out/annotations/boxes.json").exists() and not result.tally.skipped


def test_yolo_seg_writes_no_box_as_a_segment(tmp_path: Path, imgs: Path) -> None:
    h, w = donut().shape
    tasks = [task(1, "/x/a.png", [brush(donut(), "ring", rid="b"), rectangle(10, 20, 30, 40, w, h, "car")])]
    _, result = run(tmp_path, tasks, fmt="yolo-seg")
    lines = (tmp_path / "out/labels/a.txt").read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("0 ")
    assert sum(n for r, n in result.tally.dropped.items() if r.startswith("box-only region")) == 1
    _, result = run(tmp_path, tasks, fmt="yolo-seg", boxes_as_masks=True)
    lines = (tmp_path / "out/labels/a.txt").read_text().splitlines()
    xy = np.array(lines[1].split()[1:], dtype=float).reshape(-1, 2) * [w, h]
    assert np.allclose(sorted(map(tuple, xy)), [(10, 20), (10, 60), (40, 20), (40, 60)])
    assert not result.tally.dropped


def test_image_of_another_size_is_dropped_with_its_regions(tmp_path: Path, imgs: Path) -> None:
    """Region coordinates are relative to original_width/height: a file of another size cannot carry them."""
    h, w = donut().shape
    save_image(imgs, "small.png", w // 2, h // 2)
    save_image(imgs, "good.png", w, h)
    tasks = [task(1, "/x/small.png", [brush(donut(), "ring"), rectangle(1, 1, 5, 5, w, h, "ring", "r")]),
             task(2, "/x/good.png", [brush(donut(), "ring")])]
    coco, result = run(tmp_path, tasks)
    assert [i["file_name"] for i in coco["images"]] == ["good.png"]
    assert {a["image_id"] for a in coco["annotations"]} == {2}
    assert not (tmp_path / "out/images/small.png").exists()
    reason = "image whose file size differs from original_width/height of its regions"
    assert result.tally.images_dropped[reason] == 1
    assert result.tally.dropped[f"region of an {reason}"] == 2
    assert result.n_images == 1 and result.n_annotations == 1
    with pytest.raises(StrictError, match="file size differs"):
        run(tmp_path, tasks, strict=True)
    _, ok = run(tmp_path, tasks[1:], strict=True)  # the good image alone passes --strict
    assert ok.n_annotations == 1


def test_object_inside_a_mask_is_not_a_duplicate(tmp_path: Path, imgs: Path) -> None:
    """A cell drawn inside a tissue mask of the same label is an object of its own."""
    tissue = np.zeros((120, 160), bool)
    tissue[10:110, 10:150] = True
    results = [brush(tissue, "cell", rid="aB3dE5fG7h"),
               polygon([(40, 40), (60, 40), (60, 60), (40, 60)], 160, 120, "cell", rid="Kq2Lm9Np0R"),
               rectangle(10, 10, 140, 100, 160, 120, "cell", rid="Zx8Cv7Bn6M")]
    coco, result = run(tmp_path, [task(1, "/x/a.png", results)])
    assert len(coco["annotations"]) == 2 and not result.tally.dropped
    boxes = json.loads((tmp_path / "out/annotations/boxes.json").read_text())
    assert len(boxes["annotations"]) == 1  # not "the box of the mask": nothing says it is


def test_smart_click_answer_ids_mark_one_object(tmp_path: Path, imgs: Path) -> None:
    """The backend's answer (brush + box + polygons, one id prefix) is one object; nothing else merges."""
    ring = donut()
    h, w = ring.shape
    two = np.zeros((h, w), bool)
    two[10:30, 10:30] = two[60:90, 100:150] = True
    answer = smart_answer(ring, "ring")
    parts_only = [r for r in smart_answer(two, "blob") if r["type"] == "polygonlabels"]
    from label_anything.labelstudio.results import answer_of

    assert len(parts_only) == 2 and len({r["id"] for r in answer + parts_only}) == len(answer) + 2
    assert len({answer_of(r["id"]) for r in answer}) == 1 and None not in {answer_of(r["id"]) for r in answer}
    others = [rectangle(2, 2, 10, 10, w, h, "ring", rid="r2")]
    coco, result = run(tmp_path, [task(1, "/x/a.png", answer + parts_only + others)], fmt="coco-polygon")
    anns = coco["annotations"]
    assert len(anns) == 2  # the ring (its brush), the two-part blob as one annotation
    names = {c["id"]: c["name"] for c in coco["categories"]}
    by_name = {names[a["category_id"]]: a for a in anns}
    drawn = [np.array(r["value"]["points"]) * np.array([w, h]) / 100 for r in parts_only]  # as the export reads them
    assert np.array_equal(polygons_to_mask(by_name["blob"]["segmentation"], h, w), polygons_to_mask(drawn, h, w))
    assert iou(polygons_to_mask(drawn, h, w), two) > 0.9
    assert by_name["ring"]["area"] == int(ring.sum())
    n_polys = sum(r["type"] == "polygonlabels" for r in answer)
    assert result.tally.skipped["box of a smart-click answer that has a mask (one object)"] == 1
    assert result.tally.skipped["polygon of a smart-click answer that has a brush mask (one object)"] == n_polys
    assert result.tally.skipped["polygon part joined to the other parts of its smart-click answer"] == 1
    assert json.loads((tmp_path / "out/annotations/boxes.json").read_text())["annotations"][0]["bbox"] == \
        [2.0, 2.0, 10.0, 10.0]
    coco, kept = run(tmp_path, [task(1, "/x/a.png", answer + parts_only + others)], merge_suggestions=False)
    assert len(coco["annotations"]) == len(answer) - 1 + 2 and not kept.tally.dropped


def test_exif_rotated_image_is_written_upright(tmp_path: Path, imgs: Path) -> None:
    """Stored 64x40 with orientation 6 (shown 40x64): written upright, without the tag; others copied as is."""
    from PIL import ImageOps

    rng = np.random.default_rng(0)
    stored = np.zeros((40, 64, 3), np.uint8)
    stored[:, :32] = (250, 10, 10)  # left half red: after a 90° turn clockwise, the top half
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "camera maker"  # other tags survive
    Image.fromarray(stored).save(imgs / "turned.jpg", quality=95, exif=exif)
    Image.fromarray(rng.integers(0, 255, (64, 40, 3), dtype=np.uint8)).save(imgs / "plain.jpg", quality=90)
    mask = np.zeros((64, 40), bool)
    mask[:32] = True
    tasks = [task(1, "/x/turned.jpg", [brush(mask, "red")]), task(2, "/x/plain.jpg", [brush(mask, "red")])]
    coco, result = run(tmp_path, tasks)
    assert not result.tally.dropped and not result.tally.images_dropped
    out = Image.open(tmp_path / "out/images/turned.jpg")
    assert out.size == (40, 64) and out.getexif().get(0x0112, 1) == 1
    assert out.getexif().get(0x010F) == "camera maker"
    expected = np.asarray(ImageOps.exif_transpose(Image.open(imgs / "turned.jpg")), dtype=float)
    assert np.abs(np.asarray(out, dtype=float) - expected).mean() < 2.0  # high-quality re-encode
    assert np.asarray(out)[:32, :, 0].mean() > 200 and np.asarray(out)[32:, :, 0].mean() < 60
    assert (tmp_path / "out/images/plain.jpg").read_bytes() == (imgs / "plain.jpg").read_bytes()
    assert result.n_images_upright == 1
    assert "1 images written upright (EXIF orientation applied)" in result.summary()
    assert [(i["width"], i["height"]) for i in coco["images"]] == [(40, 64), (40, 64)]


class _Server:
    """A loopback HTTP server in a thread; ``routes`` maps a path to (status, headers, body)."""

    def __init__(self, routes: dict[str, tuple[int, dict[str, str], bytes]]) -> None:
        import http.server
        import threading

        self.hits: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits.append(self.path)
                status, headers, body = routes.get(self.path, (404, {}, b""))
                self.send_response(status)
                for k, v in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_redirect_to_another_host_is_not_followed(tmp_path: Path) -> None:
    png = save_image(tmp_path, "p.png", 160, 120).read_bytes()
    other = _Server({"/p.png": (200, {"Content-Type": "image/png"}, png)})
    first = _Server({"/away.png": (302, {"Location": other.url + "/p.png"}, b""),
                     "/here.png": (302, {"Location": "/p.png"}, b""),
                     "/p.png": (200, {"Content-Type": "image/png"}, png)})
    try:
        tasks = [task(1, first.url + "/away.png", [brush(donut(), "ring")]),
                 task(2, first.url + "/here.png", [brush(donut(), "ring")])]
        locator = ImageLocator(upload_dir=tmp_path / "none", label_studio_url="", api_key="")
        _, result = run(tmp_path, tasks, locator=locator)
        assert other.hits == []  # never contacted
        assert sum(result.tally.images_dropped.values()) == 1
        [reason] = result.tally.images_dropped
        assert "redirected" in reason and "--allow-image-host" in reason
        assert sorted(p.name for p in (tmp_path / "out/images").iterdir()) == ["here.png"]  # same origin: followed
        allowed = ImageLocator(upload_dir=tmp_path / "none", label_studio_url="", api_key="",
                               allowed_hosts=[other.url.removeprefix("http://")])
        _, result = run(tmp_path, tasks, locator=allowed)
        assert other.hits == ["/p.png"] and not result.tally.images_dropped
    finally:
        first.close()
        other.close()
