"""The ONNX Runtime decoder gives the PyTorch decoder's masks (IoU >= 0.999) on the same embedding."""

from __future__ import annotations

import logging
import os
import re
import time

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from label_anything.engine import Prompt, decode, encode, load_model
from label_anything.engine.onnx_decoder import (
    OnnxDecoder,
    choose_decoder,
    disable_onnx_decoder,
    enable_onnx_decoder,
    onnx_cache_path,
)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.fixture(scope="module")
def model(random_checkpoint, tmp_path_factory):
    """A MobileSAM of its own (the session's shared model must keep the PyTorch decoder)."""
    m = load_model("mobile_sam", "vit_t", random_checkpoint("mobile_sam", "vit_t"), device="cpu")
    m.cache_dir = tmp_path_factory.mktemp("onnx-cache")
    return m


def test_onnx_masks_equal_torch_masks(model, chelsea):
    h, w = chelsea.shape[:2]
    embedding = encode(model, chelsea)
    box = (w * 0.2, h * 0.15, w * 0.75, h * 0.8)
    prompts = {
        "click": Prompt.from_lists([(w * 0.5, h * 0.45)]),
        "click+negative": Prompt.from_lists([(w * 0.5, h * 0.45), (w * 0.3, h * 0.3)], [1, 0]),
        "box": Prompt.from_lists(box=box),
        "box+points": Prompt.from_lists([(w * 0.5, h * 0.45), (w * 0.25, h * 0.2)], [1, 0], box=box),
    }
    assert enable_onnx_decoder(model, model.cache_dir)
    assert onnx_cache_path(model.info.model_id, model.cache_dir).is_file()  # exported once, on disk
    try:
        for name, prompt in prompts.items():
            for keep in ("best", "all"):
                disable_onnx_decoder(model)
                ref = decode(model, embedding, prompt, keep=keep)
                enable_onnx_decoder(model, model.cache_dir)
                got = decode(model, embedding, prompt, keep=keep)
                assert got.masks.shape == ref.masks.shape, name
                for a, b in zip(got.masks, ref.masks, strict=True):
                    assert iou(a, b) >= 0.999, name
                np.testing.assert_allclose(got.scores, ref.scores, atol=1e-4, err_msg=name)
        # refinement: the previous answer's logits as the mask prompt
        logits = decode(model, embedding, prompts["click"]).best()[2]
        refine = Prompt.from_lists([(w * 0.5, h * 0.45), (w * 0.6, h * 0.6)], [1, 1], mask_logits=logits)
        got = decode(model, embedding, refine).masks[0]
        disable_onnx_decoder(model)
        ref = decode(model, embedding, refine).masks[0]
        assert iou(got, ref) >= 0.999
    finally:
        disable_onnx_decoder(model)


def test_choose_decoder(model):
    assert choose_decoder(model, "torch", model.cache_dir) == "torch" and model.onnx_decoder is None
    assert choose_decoder(model, "onnx", model.cache_dir) == "onnx" and model.onnx_decoder is not None
    disable_onnx_decoder(model)
    with pytest.raises(ValueError):
        choose_decoder(model, "tensorrt")


def _slowed(run, seconds: float):
    def slow(*args, **kwargs):
        time.sleep(seconds)
        return run(*args, **kwargs)

    return slow


@pytest.mark.parametrize("slow", ["torch", "onnx"])
def test_auto_keeps_the_faster_decoder(model, monkeypatch, caplog, slow):
    """One runtime made 500 ms slower per click (ten times either's real cost here, and above the noise of
    a busy shared CPU in the median of 3): auto must keep the other one, and log both timings, the kept
    one lower."""
    if slow == "torch":
        monkeypatch.setattr(model, "_decode_torch", _slowed(model._decode_torch, 0.5))
    else:
        monkeypatch.setattr(OnnxDecoder, "run", _slowed(OnnxDecoder.run, 0.5))
    caplog.set_level(logging.INFO, logger="label_anything.engine.onnx_decoder")
    import torch

    threads = torch.get_num_threads()
    # One thread each: on a CPU shared with other jobs, a multi-threaded PyTorch decode waits at every
    # op's barrier for a descheduled thread and was measured at 400-650 ms instead of 60.
    torch.set_num_threads(1)
    try:
        chosen = choose_decoder(model, "auto", model.cache_dir, trials=3)
        assert chosen == ("onnx" if slow == "torch" else "torch")
        assert (model.onnx_decoder is not None) == (chosen == "onnx")
    finally:
        torch.set_num_threads(threads)
        disable_onnx_decoder(model)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("decoder:")]
    kept_ms, other_ms = (float(v) for v in re.findall(r"\(([\d.]+) ms\)", line))
    assert kept_ms < other_ms and other_ms >= 500, line


def test_workers_share_the_cores_with_onnx_runtime(model, monkeypatch):
    """``serve --workers N`` gives each worker cores // N threads: ONNX Runtime's session as well as PyTorch."""
    import torch

    from label_anything.cli.serve import _share_cpu_cores

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        _share_cpu_cores(2)
        assert torch.get_num_threads() == max(1, cores // 2)
        assert enable_onnx_decoder(model, model.cache_dir)
        assert model.onnx_decoder.session.get_session_options().intra_op_num_threads == max(1, cores // 2)
        enable_onnx_decoder(model, model.cache_dir, threads=3)  # an explicit count wins
        assert model.onnx_decoder.session.get_session_options().intra_op_num_threads == 3
    finally:
        torch.set_num_threads(before)
        disable_onnx_decoder(model)


def test_decoder_threads_sleep_as_soon_as_a_click_is_answered(model):
    """Spinning is allowed inside a run (faster clicks) but stops when the run ends: between clicks the
    process uses no CPU, which the background encoder and other workers need. ONNX Runtime's default spins
    on after each run and burns a whole core for a while (measured: ~25 ms of CPU in the 50 ms after a run)."""
    import torch

    if torch.get_num_threads() < 2:
        pytest.skip("one intra-op thread: there is no pool to spin")
    assert enable_onnx_decoder(model, model.cache_dir)
    try:
        entries = model.onnx_decoder.session.get_session_options().get_session_config_entry
        assert entries("session.intra_op.allow_spinning") == "1"
        embedding = encode(model, np.zeros((64, 96, 3), np.uint8), "blank-64x96")
        prompt = Prompt.from_lists([(40.0, 30.0)])
        idle = []
        for _ in range(8):
            decode(model, embedding, prompt)
            before = time.process_time()
            time.sleep(0.1)
            idle.append(time.process_time() - before)
        # CPU time, not wall time: a sleeping process accrues none however busy the machine is.
        assert float(np.median(idle)) < 0.01, idle
    finally:
        disable_onnx_decoder(model)
