"""The benchmark's ratios (computed from one run's numbers) and the table ``label-anything bench`` prints."""

from __future__ import annotations

from typing import Any

from label_anything.benchmark.sam3 import sam3_rows


def _best_http(entry: dict) -> tuple[str, float]:
    runtimes = {k: v["p50_ms"] for k, v in entry.items() if isinstance(v, dict) and "p50_ms" in v}
    best = min(runtimes, key=runtimes.get)
    return best, runtimes[best]


def ratios(r: dict) -> dict:
    out: dict[str, Any] = {}
    for size, entry in r["http"].items():
        runtime, ours = _best_http(entry)
        out[f"naive_over_ours_{size}"] = round(r["naive"][size]["p50_ms"] / ours, 1)
        out[f"ours_runtime_{size}"] = runtime
    sdk = r["rle"].get("label_studio_sdk")
    out["rle_sdk_over_ours"] = round(sdk["p50_ms"] / r["rle"]["ours"]["p50_ms"], 1) if sdk else None
    for size, entry in r["decode"].items():
        if "decode_onnx" in entry:
            out[f"decoder_torch_over_onnx_{size}"] = round(
                entry["decode_torch"]["p50_ms"] / entry["decode_onnx"]["p50_ms"], 2
            )
    return out


def format_table(r: dict) -> str:
    """The human-readable table printed by ``label-anything bench``."""
    rows: list[tuple[str, str]] = []
    for model, v in r["encoder"].items():
        rows.append((f"encoder {model} 1024x768 (torch)", f"{v['torch']['p50_ms']:.0f} ms"))
    for size, e in r["decode"].items():
        for k in ("decode_torch", "decode_onnx"):
            if k in e:
                rows.append((f"decode {size} {k[7:]} p50/p95", f"{e[k]['p50_ms']:.1f} / {e[k]['p95_ms']:.1f} ms"))
        if "upscale" in e:
            up = e["upscale"]
            rows.append((f"  upscale to {size}: ours / postprocess_masks" + ("" if up["same_mask"] else " (DIFFER)"),
                         f"{up['ours']['p50_ms']:.1f} / {up['official']['p50_ms']:.1f} ms"))
        for key, shape in (("outputs", "object"), ("outputs_fragmented", "fragmented")):
            rle, box, poly = (e[key][k]["p50_ms"] for k in ("brush_rle", "box", "polygons"))
            rows.append((f"  brush RLE / box / polygons {size} {shape}", f"{rle:.1f} / {box:.2f} / {poly:.1f} ms"))
    for size, e in r["http"].items():
        for rt in ("torch", "onnx"):
            if rt in e:
                value = f"{e[rt]['p50_ms']:.1f} / {e[rt]['p95_ms']:.1f} ms"
                rows.append((f"HTTP warm click {size} {rt} p50/p95", value))
        f = r["http_fragmented"][size]
        for rt in ("torch", "onnx"):
            if rt in f:
                rows.append((f"HTTP warm click {size} fragmented mask {rt} p50/p95",
                             f"{f[rt]['p50_ms']:.1f} / {f[rt]['p95_ms']:.1f} ms"))
        rows.append((f"  fragmented mask {size}: fraction / parts / unpainted areas",
                     f"{f['mask']['fraction']} / {f['mask']['parts']} / {f['mask']['unpainted_areas']}"))
        rows.append((f"HTTP naive click {size} p50", f"{r['naive'][size]['p50_ms']:.0f} ms"))
        rows.append((f"naive / ours {size}", f"{r['ratios'][f'naive_over_ours_{size}']}x"))
    fc = r["first_click"]
    rows.append((f"first click, task opened {fc['opened_ms_before_click']} ms earlier, prefetch on p50",
                 f"{fc['with_prefetch']['p50_ms']:.0f} ms"))
    rows.append(("first click, prefetch off p50", f"{fc['without_prefetch']['p50_ms']:.0f} ms"))
    ht = r["heavy_task"]
    rows.append((f"click whose task holds {ht['regions']} brush regions x2 ({ht['size']}, "
                 f"{ht['body_bytes']['heavy'] / 1e6:.1f} MB): added p50", f"{ht['added_ms']:.1f} ms"))
    for shape, e in r["convert"].items():
        rows.append((f"convert {shape} brush mask {e['size']} ({e['parts']} parts): rle / polygon / yolo-seg",
                     f"{e['coco-rle']['p50_ms']:.1f} / {e['coco-polygon']['p50_ms']:.1f} / "
                     f"{e['yolo-seg']['p50_ms']:.1f} ms per mask"))
    pc = r["precompute"]
    rows.append(("precompute throughput", f"{pc['images_per_s_wall']:.2f} img/s"))
    rows.append((f"cached embedding on disk ({pc['dtype']})", f"{pc['bytes_per_embedding_on_disk'] / 1e6:.2f} MB"))
    for name, e in r.get("models", {}).items():
        rows.append((f"{name}: encoder 1024x768 / HTTP warm click p50",
                     f"{e['encoder']['p50_ms']:.0f} / {e['http_click_1024x768']['p50_ms']:.0f} ms"))
    if "sam3" in r:
        rows.extend(sam3_rows(r["sam3"]))
    rle = r["rle"]
    sdk = rle.get("label_studio_sdk")
    rows.append(("brush RLE 4000x3000 ours / label_studio_sdk",
                 f"{rle['ours']['p50_ms']:.1f} / {sdk['p50_ms']:.0f} ms" if sdk else f"{rle['ours']['p50_ms']:.1f} ms"))
    width = max(len(k) for k, _ in rows)
    m = r["meta"]
    head = [f"label-anything bench ({m['weights']})",
            f"load average start {m['load_average_start']} end {m.get('load_average_end')}, "
            f"{m['cpus']} CPUs, torch {m['torch']} ({m['torch_threads']} threads), onnxruntime {m['onnxruntime']}"]
    return "\n".join(head + [f"{k.ljust(width)}  {v}" for k, v in rows])
