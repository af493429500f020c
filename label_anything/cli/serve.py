"""``label-anything serve`` (argparse): STUB, the code moves here."""

from label_anything.server.http import add_serve_parser

__all__ = ["add_serve_parser"]
