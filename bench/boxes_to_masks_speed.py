"""Throughput of ``boxes-to-masks``: one process vs a local Ray cluster, same COCO file, same moment.

Builds a COCO file of real photos from scikit-image (full size, a few boxes each, seeded), then runs the
installed command end to end in a child process per mode and times its wall clock (start-up, reading,
encoding, decoding, writing: what a user waits for). Models are random-weight checkpoints of the real
architecture (timing does not depend on weight values). Ray modes start a throwaway local Ray instance
(``--ray-address local``), so their time includes starting Ray and the workers.

    python bench/boxes_to_masks_speed.py [--images 8] [--boxes 3] [--model mobile_sam:vit_t]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from label_anything.benchmark import random_checkpoint  # noqa: E402

PHOTOS = ("coffee", "chelsea", "astronaut", "rocket")


def build_dataset(folder: Path, n_images: int, boxes_per_image: int, seed: int = 0) -> Path:
    """``n_images`` distinct photos (the scikit-image ones, mirrored or rotated when more are asked) and a
    COCO file with ``boxes_per_image`` random boxes on each; returns the COCO path."""
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(seed)
    images_dir = folder / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(n_images):
        pixels = getattr(skimage.data, PHOTOS[i % len(PHOTOS)])()
        pixels = np.ascontiguousarray(np.rot90(pixels, k=(i // len(PHOTOS)) % 4))
        name = f"img{i:03d}.jpg"
        Image.fromarray(pixels).save(images_dir / name, quality=92)
        h, w = pixels.shape[:2]
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        for _ in range(boxes_per_image):
            bw, bh = rng.uniform(0.2, 0.6) * w, rng.uniform(0.2, 0.6) * h
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": 1,
                                "bbox": [round(x, 1), round(y, 1), round(bw, 1), round(bh, 1)],
                                "area": round(bw * bh, 1), "iscrowd": 0})
    coco = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}
    path = folder / "instances.json"
    path.write_text(json.dumps(coco))
    return path


def run(coco: Path, out: Path, family: str, config: str, checkpoint: Path, extra: list[str]) -> dict:
    """Wall seconds of one ``boxes-to-masks`` run in a child process, and its summary line."""
    command = [str(Path(sys.executable).with_name("label-anything")), "--log-level", "WARNING", "boxes-to-masks",
               str(coco), "--images", str(coco.parent / "images"), "--out", str(out), "--model-name", family,
               "--sam-config", config, "--checkpoint", str(checkpoint), "--device", "cpu", "--no-progress", *extra]
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return {"wall_s": round(wall, 1), "summary": json.loads(done.stdout.strip().splitlines()[-1])}


def pixels_differing(ours: list[dict], reference: list[dict]) -> int:
    """Mask pixels that differ between two runs' annotations (same order), summed over annotations."""
    from pycocotools import mask as mask_utils

    total = 0
    for a, b in zip(ours, reference, strict=True):
        if "segmentation" in a and a["segmentation"] != b.get("segmentation"):
            sa, sb = (dict(x["segmentation"]) for x in (a, b))
            total += int((mask_utils.decode(sa) != mask_utils.decode(sb)).sum())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--boxes", type=int, default=3, help="boxes per image")
    parser.add_argument("--model", default="mobile_sam:vit_t", help="FAMILY:CONFIG (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="also write the results here (JSON)")
    args = parser.parse_args()
    family, config = args.model.split(":")
    with tempfile.TemporaryDirectory(prefix="label-anything-b2m-") as tmp:
        folder = Path(tmp)
        coco = build_dataset(folder, args.images, args.boxes)
        checkpoint = random_checkpoint(family, config, folder / "checkpoints")
        modes = {
            "one process": [],
            "local Ray, default pool": ["--ray-address", "local"],
            "local Ray, 2 workers x 1 CPU": ["--ray-address", "local", "--ray-workers", "2",
                                             "--ray-cpus-per-worker", "1"],
        }
        results: dict[str, dict] = {}
        outputs: dict[str, list[dict]] = {}
        for name, extra in modes.items():
            out = folder / f"out-{len(results)}.json"
            results[name] = run(coco, out, family, config, checkpoint, extra)
            outputs[name] = json.loads(out.read_text())["annotations"]
    n_boxes = args.images * args.boxes
    print(f"boxes-to-masks: {args.images} photos, {n_boxes} boxes, {family} {config} (random weights), "
          f"{os.cpu_count()} CPUs, load average {[round(v, 2) for v in os.getloadavg()]}")
    base = results["one process"]["wall_s"]
    for name, r in results.items():
        # PyTorch on CPU may differ in the last float bits between thread counts (2 here, 1 per small worker)
        differing = pixels_differing(outputs[name], outputs["one process"])
        r["pixels_differing_from_one_process"] = differing
        print(f"  {name:30s} {r['wall_s']:6.1f} s wall  {args.images / r['wall_s']:.3f} images/s  "
              f"{n_boxes / r['wall_s']:.3f} boxes/s  ({base / r['wall_s']:.2f}x one process; "
              f"{differing} mask pixels differ; workers {r['summary'].get('ray_workers', '-')})")
    if args.out:
        args.out.write_text(json.dumps({"images": args.images, "boxes": n_boxes, "results": results}, indent=2))


if __name__ == "__main__":
    main()
