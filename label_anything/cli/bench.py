"""``label-anything bench``: its options and the command; the measuring is ``label_anything.benchmark``."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from label_anything import benchmark
from label_anything.benchmark import OTHER_MODELS
from label_anything.errors import LabelAnythingError


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``label-anything bench`` to the CLI's sub-commands."""
    p = subparsers.add_parser(
        "bench",
        help="measure encoder, click latency, naive ratio, prefetch, precompute and RLE on this machine",
        description="Benchmarks with random-weight checkpoints of the real architectures (timing does not "
        "depend on weight values). Prints a table and writes JSON.",
    )
    p.add_argument("--out", type=Path, default=Path("bench-results.json"), help="JSON file (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="few iterations, MobileSAM only (a smoke test)")
    p.add_argument("--decoder", choices=("auto", "torch"), default="auto",
                   help="auto: also time the ONNX Runtime decoder when onnxruntime is installed")
    p.add_argument("--workdir", type=Path, help="keep checkpoints and files here instead of a temp folder")
    p.add_argument("--models", default=None, metavar="NAMES",
                   help=f"comma-separated models to measure beside MobileSAM (encoder, warm click), from: "
                        f"{', '.join(OTHER_MODELS)}, sam3 (encoder, concept and exemplar queries, click; needs "
                        f"the [sam3] extra, ~4 min and 8 GB on a CPU); 'none' for none (default: all, sam3 when "
                        f"installed; none with --quick)")
    p.set_defaults(func=cmd_bench)
    return p


def _model_names(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(n.strip() for n in text.split(",") if n.strip() and n.strip() != "none")
    unknown = [n for n in names if n not in OTHER_MODELS and n != "sam3"]
    if unknown:
        raise LabelAnythingError(f"unknown bench model {unknown[0]!r}; choose from: {', '.join(OTHER_MODELS)}, sam3")
    return names


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the benchmark, print its table, write its JSON to ``--out``."""
    # One log line per click would bury the table; the levels come back afterwards (bench may run in-process).
    quiet = [logging.getLogger(name) for name in ("httpx", "label_anything.server", "label_anything.engine")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.WARNING)
    try:
        # Looked up on the package at call time: a test may substitute ``benchmark.run_bench``.
        results = benchmark.run_bench(quick=args.quick, workdir=args.workdir, decoder=args.decoder,
                                      models=_model_names(args.models))
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
    print(benchmark.format_table(results))
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0
