"""The ``label-anything`` command line: argparse, environment variables, one module per command."""

from label_anything.cli.parser import build_parser, main

__all__ = ["build_parser", "main"]
