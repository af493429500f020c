"""label-anything: Segment Anything models do the tedious part of image labeling."""

__version__ = "0.1.0"
