"""A random-weight SAM 3 checkpoint in the official ``sam3.pt`` layout, for tests and benchmarks.

The official builder leaves two tensors of the text encoder uninitialised (``positional_embedding`` and
``text_projection``: ``torch.empty``, normally filled by the checkpoint), which gives NaN or different
numbers on every run; they are filled from the same seeded generator as every other weight, so the
same seed always gives the same file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

RANDOM_SAM3_SCORE_THRESHOLD = 0.2
"""Random weights score every instance ~0.3, under the official 0.5: tests lower the threshold to this."""


def build_random_sam3_checkpoint(path: Path, seed: int = 0) -> Path:
    """Write ``{"model": {"detector.*": ..., "tracker.*": ...}}`` (3.4 GB float32) to ``path`` atomically."""
    import torch

    from label_anything.engine.sam3 import build_sam3_network, network_state_to_checkpoint

    torch.manual_seed(seed)
    network = build_sam3_network("cpu")
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        text = network.backbone.language_backbone.encoder
        for tensor in (text.positional_embedding, text.text_projection):
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.02)
    state = network_state_to_checkpoint(network.state_dict())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")
    os.close(fd)
    try:
        torch.save({"model": state}, tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path
