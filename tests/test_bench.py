"""`label-anything bench --quick`: every section is present with positive numbers (no timing asserted)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _positive_numbers(value, path="results"):
    """Every number under ``value`` that is a measurement (ms, per-second, bytes) must be > 0."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "outputs_on_random_mask":
                continue  # informational, skipped (None) in quick mode
            if k.endswith(("_ms", "_per_s", "per_s_encoding", "per_s_wall")) or k.startswith("bytes"):
                assert isinstance(v, int | float) and v > 0, f"{path}.{k} = {v!r}"
            else:
                _positive_numbers(v, f"{path}.{k}")


def test_quick_bench_writes_every_section(tmp_path, capsys):
    from label_anything.cli import main

    out = tmp_path / "bench.json"
    # Small photos keep the test short; the real run uses 1024x768 and 4000x3000.
    from label_anything import bench

    sizes = ((320, 240), (640, 480))
    original = bench.run_bench

    def small(**kwargs):
        # SAM 2.1 tiny stands for the other models (vit_b, SAM 2.1 small): same section, same code path
        kwargs["models"] = ("sam2.1_tiny",)
        return original(sizes=sizes, rle_size=(640, 480), **kwargs)

    bench.run_bench = small
    try:
        assert main(["bench", "--quick", "--out", str(out), "--workdir", str(tmp_path / "work")]) == 0
    finally:
        bench.run_bench = original
    printed = capsys.readouterr().out
    assert "random-weight checkpoints" in printed and "naive / ours" in printed
    r = json.loads(out.read_text())
    sections = ("meta", "encoder", "decode", "http", "naive", "first_click", "precompute", "rle", "models", "ratios")
    for section in sections:
        assert section in r, section
    assert "random-weight" in r["meta"]["weights"]
    assert r["encoder"]["mobile_sam"]["torch"]["p50_ms"] > 0
    for size in ("320x240", "640x480"):
        assert r["decode"][size]["decode_torch"]["p50_ms"] > 0
        assert r["decode"][size]["upscale"]["same_mask"] is True  # the windowed upscale = postprocess_masks > 0
        assert r["http"][size]["torch"]["p50_ms"] > 0 and r["http"][size]["regions"] >= 3  # mask, box, polygon
        assert r["naive"][size]["p50_ms"] > 0
        assert r["ratios"][f"naive_over_ours_{size}"] > 0
    assert r["first_click"]["with_prefetch"]["p50_ms"] > 0 and r["first_click"]["without_prefetch"]["p50_ms"] > 0
    assert r["precompute"]["second_run_encoded"] == 0 and r["precompute"]["images_per_s_wall"] > 0
    assert r["rle"]["same_output"] is True
    sam2 = r["models"]["sam2.1_tiny"]
    assert sam2["model"] == "sam2 tiny" and sam2["encoder"]["p50_ms"] > 0 and sam2["http_click_1024x768"]["n"] == 3
    assert "sam2.1_tiny: encoder 1024x768" in printed
    _positive_numbers(r)


def test_unknown_bench_model_is_a_clear_error(capsys):
    from label_anything.cli import main

    assert main(["bench", "--models", "sam_vit_q"]) == 2
    assert "unknown bench model 'sam_vit_q'" in capsys.readouterr().err
