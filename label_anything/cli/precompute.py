"""``label-anything precompute`` (argparse): STUB, the code moves here."""

from label_anything.app.precompute import add_precompute_parser

__all__ = ["add_precompute_parser"]
