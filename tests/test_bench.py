"""`label-anything bench --quick`: the numbers it reports hang together (what a broken bench would violate).

Timing relations are only asserted where the expected gap is many times the noise of a shared 2-core
machine (an encode on every click vs. a cached click; prefetch on vs. off), and torch runs one thread
so that another process on the machine slows every section alike instead of stalling a spinning pool.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re

import numpy as np
import pytest

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SIZES = ((320, 240), (640, 480))


def percentile_entries(value, path="results"):
    """(path, entry) of every {p50_ms, p95_ms, mean_ms, n} dict under ``value``."""
    if isinstance(value, dict):
        if "p50_ms" in value:
            yield path, value
        for k, v in value.items():
            yield from percentile_entries(v, f"{path}.{k}")


def table_rows(printed: str) -> dict[str, str]:
    """The printed table: label → value (labels and values are separated by two or more spaces)."""
    rows = {}
    for line in printed.splitlines():
        match = re.fullmatch(r"\s*(\S.*?\S)\s{2,}(\S.*)", line)
        if match:
            rows[match[1]] = match[2]
    return rows


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory):
    """One `bench --quick` run on small photos, with SAM 2.1 tiny standing for the other models (same section,
    same code path): (results JSON, printed text, work folder, torch threads it ran with)."""
    import torch

    from label_anything import benchmark as bench
    from label_anything.cli.parser import main

    tmp = tmp_path_factory.mktemp("bench")
    out, work = tmp / "bench.json", tmp / "work"
    original, threads = bench.run_bench, torch.get_num_threads()

    def small(**kwargs):
        kwargs["models"] = ("sam2.1_tiny",)
        return original(sizes=SIZES, rle_size=(640, 480), heavy_size=(640, 480), **kwargs)

    bench.run_bench = small
    torch.set_num_threads(1)
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            assert main(["bench", "--quick", "--out", str(out), "--workdir", str(work)]) == 0
    finally:
        bench.run_bench = original
        torch.set_num_threads(threads)
    return json.loads(out.read_text()), buffer.getvalue(), work, 1


def test_every_section_and_percentiles_are_sane(quick_bench):
    r, printed, _, _ = quick_bench
    for section in ("meta", "encoder", "decode", "http", "http_fragmented", "heavy_task", "naive", "first_click",
                    "precompute", "rle", "convert", "models"):
        assert section in r, section
    entries = list(percentile_entries(r))
    assert len(entries) > 20
    for path, e in entries:
        assert 0 < e["p50_ms"] <= e["p95_ms"], path
        assert e["n"] >= 1 and e["mean_ms"] > 0, path
        if e["n"] == 1:  # one sample: every statistic is that sample
            assert e["p50_ms"] == e["p95_ms"] == e["mean_ms"], path
    for size in (f"{w}x{h}" for w, h in SIZES):
        assert r["decode"][size]["upscale"]["same_mask"] is True  # windowed upscale == postprocess_masks > 0
        assert r["http"][size]["regions"] == 3  # one object with mask + box + polygon outputs
    assert r["rle"]["same_output"] is True
    for size in (f"{w}x{h}" for w, h in SIZES):
        # The random-weight model's own answer: fragmented (several parts, many holes), one polygon per kept part.
        fragmented = r["http_fragmented"][size]
        assert fragmented["mask"]["parts"] > 1 and fragmented["mask"]["unpainted_areas"] > 10, fragmented
        assert 3 <= fragmented["regions"] <= 2 + 50  # brush, box, polygons of the kept parts (at most 50)
        assert f"HTTP warm click {size} fragmented mask torch p50/p95" in printed
    heavy = r["heavy_task"]
    assert heavy["body_bytes"]["heavy"] > 20 * heavy["body_bytes"]["light"]
    assert heavy["added_ms"] == pytest.approx(heavy["heavy"]["p50_ms"] - heavy["light"]["p50_ms"], abs=0.051)
    convert = r["convert"]
    assert set(convert) == {"object", "fragmented", "speckle"}
    assert convert["object"]["parts"] == 1 < convert["fragmented"]["parts"] < convert["speckle"]["parts"]
    assert "convert speckle brush mask 320x240" in printed
    sam2 = r["models"]["sam2.1_tiny"]
    assert sam2["model"] == "sam2 tiny" and "sam2.1_tiny: encoder 1024x768" in printed


def test_load_average_and_machine_are_printed_as_recorded(quick_bench):
    import torch

    r, printed, _, threads = quick_bench
    m = r["meta"]
    for key in ("load_average_start", "load_average_end"):
        assert len(m[key]) == 3 and all(v >= 0 for v in m[key]), m[key]
    assert f"load average start {m['load_average_start']} end {m['load_average_end']}" in printed
    assert m["cpus"] == os.cpu_count() and m["torch_threads"] == threads and m["torch"] == torch.__version__
    assert f"{m['cpus']} CPUs" in printed and f"({threads} threads)" in printed
    assert "random-weight checkpoints" in m["weights"] and m["weights"] in printed


def test_ratios_are_computed_from_the_same_runs_numbers(quick_bench):
    r, printed, _, _ = quick_bench
    rows = table_rows(printed)
    for size in (f"{w}x{h}" for w, h in SIZES):
        http = {rt: r["http"][size][rt]["p50_ms"] for rt in ("torch", "onnx") if rt in r["http"][size]}
        ours_rt = min(http, key=http.get)
        naive = r["naive"][size]["p50_ms"]
        ratio = r["ratios"][f"naive_over_ours_{size}"]
        assert r["ratios"][f"ours_runtime_{size}"] == ours_rt
        assert ratio == pytest.approx(naive / http[ours_rt], abs=0.051)
        assert rows[f"naive / ours {size}"] == f"{ratio}x"
        assert rows[f"HTTP naive click {size} p50"] == f"{naive:.0f} ms"
        torch_http = r["http"][size]["torch"]
        assert rows[f"HTTP warm click {size} torch p50/p95"] == (
            f"{torch_http['p50_ms']:.1f} / {torch_http['p95_ms']:.1f} ms")
        decode = r["decode"][size]
        if "decode_onnx" in decode:
            assert r["ratios"][f"decoder_torch_over_onnx_{size}"] == pytest.approx(
                decode["decode_torch"]["p50_ms"] / decode["decode_onnx"]["p50_ms"], abs=0.0051)
        else:
            assert f"decoder_torch_over_onnx_{size}" not in r["ratios"]
    sdk = r["rle"]["label_studio_sdk"]
    if sdk:
        assert r["ratios"]["rle_sdk_over_ours"] == pytest.approx(sdk["p50_ms"] / r["rle"]["ours"]["p50_ms"], abs=0.051)


def test_timings_keep_their_order(quick_bench):
    """Relations whose gap is many times the machine's noise."""
    r, _, _, _ = quick_bench
    without = r["first_click"]["without_prefetch"]["p50_ms"]
    # Prefetch encodes while the annotator looks: the first click is then a warm one, not encode + click.
    assert r["first_click"]["with_prefetch"]["p50_ms"] < without
    for size in (f"{w}x{h}" for w, h in SIZES):
        ours = min(v["p50_ms"] for k, v in r["http"][size].items() if k in ("torch", "onnx"))
        decode = min(v["p50_ms"] for k, v in r["decode"][size].items() if k.startswith("decode_"))
        naive = r["naive"][size]["p50_ms"]
        # The naive click encodes every time: far above a cached click, about a first click without prefetch
        # (also encode + click; 1024x768 there, but the encoder input is 1024 x 1024 either way).
        assert naive >= 2 * ours, (size, naive, ours)
        assert without / 4 <= naive <= 4 * without, (size, naive, without)
        # The decoder alone is part of the HTTP click (which adds outputs and HTTP): never several times more.
        assert decode <= 3 * ours, (size, decode, ours)


def test_bytes_per_embedding_is_a_real_cached_entrys_size(quick_bench):
    from label_anything.benchmark import load_random_model, scene
    from label_anything.engine import encode
    from label_anything.engine.cache import embedding_from_bytes, embedding_to_bytes, to_storage_dtype

    r, printed, work, _ = quick_bench
    pc = r["precompute"]
    files = sorted((work / "precompute" / "embeddings").glob("*/*.npz"))
    assert len(files) == pc["images"] and pc["second_run_encoded"] == 0
    # Encoding is part of the wall time: the wall rate cannot beat the encoder's.
    assert pc["images_per_s_wall"] <= pc["images_per_s_encoding"]
    # What the cache writes for one 1024x768 photo, made here from the same model and storage dtype.
    model = load_random_model("mobile_sam", "vit_t", work / "checkpoints")
    image = scene(1024, 768, seed=7)
    embedding = encode(model, image, hashlib.sha256(image.tobytes()).hexdigest())
    entry = embedding_to_bytes(to_storage_dtype(embedding, np.dtype(pc["dtype"])))
    assert pc["bytes_per_embedding_on_disk"] == len(entry)
    for f in files:
        assert f.stat().st_size == len(entry)
        stored = embedding_from_bytes(f.read_bytes())
        assert {k: v.dtype.name for k, v in stored.arrays.items()} == {k: pc["dtype"] for k in stored.arrays}
    assert table_rows(printed)[f"cached embedding on disk ({pc['dtype']})"] == f"{len(entry) / 1e6:.2f} MB"


def test_unknown_bench_model_is_a_clear_error(capsys):
    from label_anything.cli.parser import main

    assert main(["bench", "--models", "sam_vit_q"]) == 2
    assert "unknown bench model 'sam_vit_q'" in capsys.readouterr().err
