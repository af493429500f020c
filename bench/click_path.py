"""Runner for the click-path benchmark: ``python bench/click_path.py [--quick] [--out FILE]``.

The code lives in ``label_anything/benchmark/`` (its options in ``label_anything/cli/bench.py``) so that the
installed CLI (``label-anything bench``) can import it; this script is the same command for a checkout.
Random-weight checkpoints of the real architectures are used: timing does not depend on weight values.
"""

from __future__ import annotations

import argparse
import sys

from label_anything.cli.bench import add_bench_parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/click_path.py")
    sub = parser.add_subparsers(dest="command")
    add_bench_parser(sub)
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
