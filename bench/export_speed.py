"""How long `convert` takes on a large Label Studio export, and how much memory it holds.

Builds a synthetic export of N tasks (default 10,000) the way Label Studio writes them: per task two brush
regions (ellipses, encoded with ``brush_rle_encode``, byte-identical to Label Studio's), one polygon and one
rectangle, in percent of a W x H image. No image files (the images are counted as not found, which is
the part of the job that does not depend on the disk). Each conversion runs in a child process that reports
its wall time and peak resident memory, so memory at 1/10 of the tasks shows whether it stays bounded.

    python bench/export_speed.py [--tasks 10000] [--size 320x240] [--formats coco-rle,coco-polygon,yolo-seg]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from label_anything.labelstudio.rle import brush_rle_encode  # noqa: E402

CHILD = """
import json, resource, sys, time
from pathlib import Path
from label_anything.app.convert.dataset import convert
from label_anything.app.convert.images import ImageLocator
t = time.perf_counter()
r = convert(Path(sys.argv[1]), Path(sys.argv[2]), fmt=sys.argv[3], progress=True,
            locator=ImageLocator(upload_dir=Path(sys.argv[2]) / "none", download=False))
print(json.dumps({"seconds": time.perf_counter() - t, "tasks": r.n_tasks, "annotations": r.n_annotations,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def ellipse(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    cy, cx = rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w
    ry, rx = rng.uniform(0.1, 0.25) * h, rng.uniform(0.1, 0.25) * w
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1


def write_export(path: Path, n_tasks: int, w: int, h: int) -> None:
    """Stream N tasks into a JSON array (a pool of 64 masks is reused: encoding is not what is measured)."""
    rng = np.random.default_rng(0)
    pool = [json.dumps(brush_rle_encode(ellipse(h, w, rng))) for _ in range(64)]
    with path.open("w", encoding="utf-8") as f:
        f.write("[")
        for i in range(n_tasks):
            results = []
            for k in range(2):
                results.append(
                    f'{{"id": "b{k}", "type": "brushlabels", "from_name": "tag", "to_name": "image", '
                    f'"original_width": {w}, "original_height": {h}, "image_rotation": 0, "value": {{"format": '
                    f'"rle", "rle": {pool[(i * 2 + k) % 64]}, "brushlabels": ["class{(i + k) % 5}"]}}}}'
                )
            poly = {"id": "p", "type": "polygonlabels", "from_name": "poly", "to_name": "image",
                    "original_width": w, "original_height": h,
                    "value": {"points": [[10, 10], [40, 12], [35, 50], [12, 40]], "polygonlabels": ["poly"]}}
            rect = {"id": "r", "type": "rectanglelabels", "from_name": "rect", "to_name": "image",
                    "original_width": w, "original_height": h,
                    "value": {"x": 50, "y": 50, "width": 20, "height": 10, "rotation": 0, "rectanglelabels": ["box"]}}
            results += [json.dumps(poly), json.dumps(rect)]
            f.write(("," if i else "") + f'\n{{"id": {i + 1}, "data": {{"image": "/data/upload/1/img{i:05d}.jpg"}}, '
                    f'"annotations": [{{"id": {i + 1}, "was_cancelled": false, "created_at": '
                    f'"2024-01-01T00:00:00Z", "result": [{", ".join(results)}]}}], "predictions": []}}')
        f.write("]\n")


def run(export: Path, out: Path, fmt: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(export), str(out), fmt], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--size", default="320x240", help="W x H of the images")
    parser.add_argument("--formats", default="coco-rle", help="comma separated")
    args = parser.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for n in (max(1, args.tasks // 10), args.tasks):
            export = tmp / f"export-{n}.json"
            t = time.perf_counter()
            write_export(export, n, w, h)
            mb = export.stat().st_size / 2**20
            print(f"{n} tasks, {w}x{h}, 4 regions each: export {mb:.1f} MB built in {time.perf_counter() - t:.1f} s")
            for fmt in args.formats.split(","):
                r = run(export, tmp / f"out-{fmt}-{n}", fmt)
                print(f"  {fmt:13s} {r['seconds']:7.1f} s  {n / r['seconds']:7.0f} tasks/s  "
                      f"{mb / r['seconds']:5.1f} MB/s  {r['annotations']} annotations  "
                      f"peak RSS {r['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
