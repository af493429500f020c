"""labelstudio.results.mask_results on large masks: polygons traced in a thread beside the brush encoding
give exactly the regions of the one-thread path."""

from __future__ import annotations

import cv2
import numpy as np

from label_anything.labelstudio import results
from label_anything.labelstudio.context import Click
from label_anything.labelstudio.results import OutputOptions, mask_results
from label_anything.labelstudio.rle import brush_rle_decode


def fragmented(h: int, w: int) -> np.ndarray:
    noise = np.random.default_rng(4).standard_normal((h // 8, w // 8)).astype(np.float32)
    return cv2.resize(noise, (w, h), interpolation=cv2.INTER_LINEAR) > -0.4


def test_large_masks_trace_polygons_in_a_thread_with_the_same_answer(monkeypatch) -> None:
    h, w = 600, 800
    mask = fragmented(h, w)
    assert mask.size >= results._PARALLEL_PIXELS
    click = Click("image", "kp", "cat", w, h, 0.0, np.zeros((0, 2), np.float32), np.zeros(0, np.int32), None)
    controls = {"brushlabels": "brush", "rectanglelabels": "box", "polygonlabels": "poly"}
    threads = []
    real = results._polygons

    def recording(m, options):
        import threading

        threads.append(threading.current_thread().name)
        return real(m, options)

    monkeypatch.setattr(results, "_polygons", recording)
    parallel = mask_results(mask, 0.5, click, controls, OutputOptions(mask=True, bbox=True, poly=True))
    monkeypatch.setattr(results, "_PARALLEL_PIXELS", mask.size + 1)
    serial = mask_results(mask, 0.5, click, controls, OutputOptions(mask=True, bbox=True, poly=True))
    assert threads[0].startswith("label-anything-poly") and not threads[1].startswith("label-anything-poly")

    def without_ids(regions: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "id"} for r in regions]

    assert without_ids(parallel) == without_ids(serial)
    assert [r["type"] for r in parallel][:3] == ["brushlabels", "rectanglelabels", "polygonlabels"]
    assert len(parallel) > 5  # several polygon parts
    assert np.array_equal(brush_rle_decode(parallel[0]["value"]["rle"], h, w), mask)
