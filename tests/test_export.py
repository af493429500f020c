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

from label_anything.errors import LabelAnythingError
from label_anything.export.convert import StrictError, convert, split_ids
from label_anything.export.images import ImageLocator
from label_anything.export.mmdet import TEMPLATES, render_config
from label_anything.labelstudio.rle import brush_rle_encode
from label_anything.masks import polygons_to_mask

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
    [ann] = coco["annotations"]
    assert ann["segmentation"] == [] and ann["bbox"] == [10.0, 20.0, 30.0, 40.0] and ann["area"] == 1200
    assert result.tally.dropped["unsupported result type 'choices'"] == 1
    coco, result = run(tmp_path, tasks, skip_boxes=True)
    assert coco["annotations"] == [] and result.tally.skipped["box-only region (--skip-boxes)"] == 1
    assert "not converted: 1 × unsupported result type 'choices'" in result.summary()


def test_strict_writes_no_annotation_file(tmp_path: Path, imgs: Path) -> None:
    tasks = [task(1, "/data/upload/1/missing.png", [brush(donut(), "d")])]
    with pytest.raises(StrictError, match="image not found"):
        run(tmp_path, tasks, strict=True)
    leftovers = list((tmp_path / "out" / "annotations").iterdir())
    assert leftovers == []  # no ann.json, no spool, no temp file
    coco, result = run(tmp_path, tasks)  # not strict: converted, the missing image counted
    assert len(coco["annotations"]) == 1 and result.tally.dropped
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
    assert [names[a["category_id"]] for a in by_image[5]] == ["new", "new"]
    assert [names[a["category_id"]] for a in by_image[6]] == ["new", "new"]
    assert by_image[7] == [] and by_image[8] == []
    assert result.tally.skipped["cancelled annotation"] == 1
    assert sum(v for k, v in result.tally.skipped.items() if "older annotation" in k) == 1
    coco, _ = run(tmp_path, tasks, all_annotations=True)
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
    _, _result = run(tmp_path, tasks, fmt="yolo-seg", val_ratio=0.5)
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
    assert result.tally.dropped["image not found (use --images-root or LABEL_STUDIO_URL)"] == 1


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
    from label_anything.export.preview import preview

    h, w = donut().shape
    for name in ("a.png", "b.png"):
        save_image(imgs, name, w, h)
    tasks = [task(1, "/x/a.png", [brush(donut(), "ring"), rectangle(2, 2, 30, 20, w, h, "box", "r")]),
             task(2, "/x/b.png", [polygon([(10, 10), (90, 10), (50, 70)], w, h, "tri")])]
    for fmt in ("coco-rle", "yolo-seg"):
        run(tmp_path, tasks, fmt=fmt)
        info = preview(tmp_path / "out", tmp_path / f"pv-{fmt}")
        assert info["drawn"] == 2
        sheet = np.asarray(Image.open(info["sheet"]))
        assert sheet.shape[0] >= 256 and sheet.shape[1] >= 512
        drawn = np.asarray(Image.open(tmp_path / f"pv-{fmt}" / "a.png"))
        assert drawn.shape == (h, w, 3)
        if fmt == "coco-rle":
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


def test_smart_click_answer_is_one_object(tmp_path: Path, imgs: Path) -> None:
    """Brush + its box + its polygon (what a smart click answers with --out-bbox --out-poly) → one object;
    a box or polygon of another object, or of another label, stays."""
    from label_anything.masks import mask_to_polygons, mask_to_xyxy

    mask = donut()
    h, w = mask.shape
    save_image(imgs, "a.png", w, h)
    x0, y0, x1, y1 = mask_to_xyxy(mask)
    (outline,) = mask_to_polygons(mask)
    results = [
        brush(mask, "ring"),
        rectangle(x0, y0, x1 - x0, y1 - y0, w, h, "ring", rid="r1"),
        polygon([tuple(p) for p in outline], w, h, "ring", rid="p1"),
        rectangle(2, 2, 10, 10, w, h, "ring", rid="r2"),  # another object
        rectangle(x0, y0, x1 - x0, y1 - y0, w, h, "other", rid="r3"),  # same box, another label
    ]
    export = write_export(tmp_path / "e.json", [task(1, "/data/upload/9/a.png", results)])
    out = tmp_path / "o"
    summary = convert(export, out, fmt="coco-rle", locator=ImageLocator(imgs, download=False), progress=False)
    anns = json.loads((out / "annotations" / "ann.json").read_text())["annotations"]
    assert len(anns) == 3
    assert sorted(bool(a["segmentation"]) for a in anns) == [False, False, True]
    assert summary.tally.skipped["box of a mask region of the same label (one object)"] == 1
    assert summary.tally.skipped["polygon outlining a brush mask of the same label (one object)"] == 1
    kept = convert(export, tmp_path / "o2", fmt="coco-rle", locator=ImageLocator(imgs, download=False),
                   progress=False, merge_suggestions=False)
    assert len(json.loads((tmp_path / "o2" / "annotations" / "ann.json").read_text())["annotations"]) == 5
    assert not kept.tally.skipped


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
