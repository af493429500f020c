"""Errors a user can act on: each message is one sentence that says what to do."""


class LabelAnythingError(Exception):
    """Base class: the CLI prints the message (no stack trace) and exits with status 2."""


class CheckpointError(LabelAnythingError):
    """A checkpoint is missing, corrupt, unsafe, or does not fit the chosen architecture."""


class DeviceError(LabelAnythingError):
    """The requested torch device does not exist on this machine."""


class ImageError(LabelAnythingError):
    """An image cannot be read, is too large, or is not what the caller said it is."""


class PromptError(LabelAnythingError, ValueError):
    """A prompt (points, box, mask input) is malformed."""
