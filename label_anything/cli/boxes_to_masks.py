"""``label-anything boxes-to-masks`` (argparse): STUB, the code moves here."""

from label_anything.app.boxes_to_masks import add_boxes_to_masks_parser

__all__ = ["add_boxes_to_masks_parser"]
