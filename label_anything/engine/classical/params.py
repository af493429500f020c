"""The classical engine's tuning constants, each with what ``bench/classical_quality.py`` measured."""

ENCODE_MAX_SIDE = 1024
"""Longest side of the working copy kept in the embedding (3 MB at most; bigger photos are downscaled)."""

CROP_SIDE = 224
"""Longest side of the crop GrabCut works on; bounds decode time whatever the object's size.
OpenCV's GrabCut costs a few microseconds a pixel and round. Box IoU on the bench: 160 px 0.88,
224 px 0.93, 320 px 0.92 at 2.5 times the time of 224 px."""

GRABCUT_ITERATIONS = 2
"""GrabCut rounds (colour models re-fitted, graph cut again); more did not raise IoU on the bench."""

MARGIN_FRACTION = 0.1
"""Background margin around the object rectangle, as a fraction of its longest side (0.2: no better)."""

MIN_MARGIN = 8
"""The margin is at least this many working-image pixels: small boxes need background samples too."""

BOX_SURE_BORDER = 2
"""Box prompts: only this many crop pixels at the crop's edge are sure background; the rest of the
margin is probable background. Box IoU on the bench (60 scenes) with the sure margin / with this:
tight box 0.919 / 0.917, box +/-5% 0.885 / 0.891, box 4% inside the object 0.824 / 0.849."""

POINT_RADIUS = 0.02
"""Radius of a point's sure-label disk, as a fraction of the crop's longest side."""

NEGATIVE_TOLERANCE = 16
"""A negative point also marks connected pixels within this much (per channel, of 255) of its colour."""

PRIOR_GROWTH = 0.15
"""Refinement: the previous mask's box grows by this fraction per side, so the mask can grow too."""

HOLE_FRACTION = 0.02
"""Holes below this fraction of the mask's area are filled (GrabCut speckle); bigger ones are real."""

MIN_SAMPLES = 10
"""GrabCut fits 5-component colour models; with fewer pixels on a side it cannot, and is skipped."""

RNG_SEED = 12345
"""Seed of OpenCV's RNG for every decode: GrabCut's k-means initialisation is then deterministic."""

SCORE_PIXELS = 10_000
"""The score looks at about this many of the pixels GrabCut decided."""

LOGIT_MAGNITUDE = 10.0
"""``low_res_logits`` are +/- this far from the mask edge, like a confident SAM answer."""

PROBE_FIRST = 0.06
"""Points only: the first probe window's side, as a fraction of the image's longest side."""

PROBE_STEP = 1.35
"""Points only: each probe window is this much bigger than the one before."""

PROBE_COUNT = 10
"""Points only: at most this many probe windows (0.06 to 0.9 of the longest side)."""

PROBE_SIDE = 80
"""Longest side of a probe's crop: a probe only has to find the object's extent, not its edge
(64 px lost 0.09 of click IoU on the bench, 96 px gained nothing)."""

PROBE_ITERATIONS = 1
"""GrabCut rounds of a probe (2: no better, 25% slower)."""

PROBE_MIN_FILL = 0.1
"""A probe fits only if its mask covers this much of its window (less: the window is inside the object)."""

PROBE_STABILITY = 0.8
"""A fitting probe is the object when the next bigger window's mask has at least this IoU with it."""

WINDOW_ITERATIONS = 1
"""GrabCut rounds of the final cut in the chosen window (it starts from the probe's mask)."""
