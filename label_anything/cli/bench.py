"""``label-anything bench`` (argparse): STUB, the code moves here."""

from label_anything.benchmark import add_bench_parser

__all__ = ["add_bench_parser"]
