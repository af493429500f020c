"""``label-anything bench``: the click path's numbers on this machine, measured side by side in one run.

Everything runs in one process, one section after the other, so ratios compare like with like; the load
average before and after is recorded because a busy machine slows everything (report it with numbers).

Models use **random-weight checkpoints of the real architectures** (built with the official packages and
loaded through ``load_model``, like a downloaded one): timing does not depend on weight values. Mask
*shapes* do: random weights give fragmented masks (dozens of parts, thousands of holes over most of the
image), on which upscaling, brush RLE and polygons cost far more than on a real object. So every click
section is measured twice: with the real decoder network's logits swapped for those of a realistic object
(an ellipse with a hole, ~15 % of the image), which the model's own code upscales and the output stage turns
into regions (``http``), and end to end on the random-weight model's own fragmented answer
(``http_fragmented``), the worst shape a click meets.

Sections: encoder, decode (PyTorch and ONNX Runtime; output steps on both shapes), http and http_fragmented
(warm click), heavy_task (the same click, its task carrying 50 brush regions in an annotation and a draft),
naive (encode on every click), first_click (task opened earlier, with and without prefetch), precompute, rle
(ours vs label_studio_sdk), convert (ms per brush mask, per format, for an object, a fragmented answer and
speckle), models (SAM vit_b, SAM 2.1 tiny and small: encoder and warm click).

Modules: ``synthetic`` (scenes, object masks, random-weight checkpoints), ``clicks`` (``/predict`` bodies, a
real HTTP server), ``timing``, ``sections`` (one function per section), ``run`` (``run_bench``, the driver),
``report`` (ratios, the printed table). The command line (``add_bench_parser``, ``cmd_bench``) is
``label_anything.cli.bench``.
"""

# The surface used outside the package: the command (cli/bench.py), tests and the bench/ scripts.
from label_anything.benchmark.report import format_table
from label_anything.benchmark.run import run_bench
from label_anything.benchmark.sections import OTHER_MODELS
from label_anything.benchmark.synthetic import load_random_model, random_checkpoint, scene

__all__ = ["OTHER_MODELS", "format_table", "load_random_model", "random_checkpoint", "run_bench", "scene"]
