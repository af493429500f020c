"""``label-anything import-coco`` (argparse): STUB, the code moves here."""

from label_anything.app.import_coco import add_import_coco_parser

__all__ = ["add_import_coco_parser"]
