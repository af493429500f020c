"""``label-anything up`` (argparse): STUB, the code moves here."""

from label_anything.app.up import add_up_parser

__all__ = ["add_up_parser"]
