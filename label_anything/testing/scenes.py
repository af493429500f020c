"""Photos with one pasted object whose mask is known exactly: ground truth for segmentation quality.

Backgrounds are scikit-image's bundled photos (astronaut, coffee, cat, rocket, motorcycle) resized to
1024 x 768. Objects are the horse silhouette, coins cut out of ``skimage.data.coins()`` by
thresholding (with their own metal texture), and random ellipses, stars and blobs; objects without
their own texture are filled with a crop of another photo (or a tinted grey texture). Edges are
alpha-blended over one pixel, like a real photo's, and the whole picture gets mild sensor noise.

Everything is drawn from ``numpy.random.default_rng((seed, index))``: the same seed gives the same
scenes on every machine. Used by ``bench/classical_quality.py`` and ``tests/test_classical.py``.

Importing this module needs only numpy and OpenCV (the prompt and scoring helpers use nothing else);
the scenes themselves are built from photos bundled with scikit-image, imported when first needed.

Example:
    >>> scene = make_scene(0)
    >>> scene.image.shape, scene.image.dtype, scene.mask.dtype, bool(scene.mask.any())
    ((768, 1024, 3), dtype('uint8'), dtype('bool'), True)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np

IMAGE_SIZE = (768, 1024)
"""(H, W) of every scene: the photo size the design's timings are quoted for."""

SHAPES = ("horse", "coin", "ellipse", "star", "blob")


@dataclass(frozen=True, eq=False)
class Scene:
    """One benchmark case.

    Attributes:
        name: "<index>-<shape>-on-<background>", for tables and failure messages.
        image: (H, W, 3) uint8 RGB.
        mask: (H, W) bool, the pasted object (alpha >= 0.5).
    """

    name: str
    image: np.ndarray
    mask: np.ndarray


# ---------------------------------------------------------------- sources (bundled with scikit-image)


def _data():
    """``skimage.data``, or an ImportError that says how to get it."""
    try:
        from skimage import data
    except ImportError as exc:
        raise ImportError(
            "label_anything.testing.scenes builds its scenes from scikit-image's bundled photos: "
            "pip install scikit-image (or label-anything[dev])"
        ) from exc
    return data


@cache
def backgrounds() -> dict[str, np.ndarray]:
    """Name → (H, W, 3) uint8 RGB photo at IMAGE_SIZE."""
    data = _data()
    photos = {
        "astronaut": data.astronaut(),
        "coffee": data.coffee(),
        "cat": data.chelsea(),
        "rocket": data.rocket(),
        "motorcycle": data.stereo_motorcycle()[0],
    }
    height, width = IMAGE_SIZE
    return {name: cv2.resize(p, (width, height), interpolation=cv2.INTER_CUBIC) for name, p in photos.items()}


@cache
def _texture_photos() -> dict[str, np.ndarray]:
    """Name → (H, W, 3) uint8 RGB photos used to colour objects (each at least 300 px a side)."""
    data = _data()
    textures = dict(backgrounds())
    textures["ihc"] = data.immunohistochemistry()
    for name in ("brick", "grass", "gravel"):
        grey = getattr(data, name)()
        textures[name] = np.repeat(grey[:, :, None], 3, axis=2)
    return textures


@cache
def coin_cutouts() -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """The coins of ``skimage.data.coins()``: ((h, w, 3) uint8 RGB patch, (h, w) bool mask) each.

    Otsu threshold of the smoothed picture, holes filled, small and border-touching parts dropped.
    """
    grey = _data().coins()
    smooth = cv2.GaussianBlur(grey, (5, 5), 0)
    _, binary = cv2.threshold(smooth, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    height, width = grey.shape
    coins = []
    for i in range(1, count):
        x, y, w, h, area = stats[i]
        if area < 800 or x == 0 or y == 0 or x + w >= width or y + h >= height:
            continue
        mask = _fill_holes(labels[y : y + h, x : x + w] == i)
        patch = np.repeat(grey[y : y + h, x : x + w, None], 3, axis=2)
        coins.append((patch, mask))
    return tuple(coins)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """(h, w) bool with every background region not connected to the border filled."""
    padded = np.pad(mask, 1).astype(np.uint8)
    flood = padded.copy()
    cv2.floodFill(flood, None, (0, 0), 1)
    return (padded | (1 - flood)).astype(bool)[1:-1, 1:-1]


# ---------------------------------------------------------------- object shapes (bool masks)


def _horse(rng: np.random.Generator) -> np.ndarray:
    mask = ~_data().horse()  # the bundled silhouette is False on the horse
    return mask[:, ::-1] if rng.random() < 0.5 else mask


def _ellipse(rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros((400, 400), np.uint8)
    axes = (int(rng.uniform(80, 190)), int(rng.uniform(60, 190)))
    cv2.ellipse(mask, (200, 200), axes, float(rng.uniform(0, 180)), 0, 360, 1, thickness=-1)
    return mask.astype(bool)


def _star(rng: np.random.Generator) -> np.ndarray:
    tips = int(rng.integers(5, 9))
    angles = np.arange(2 * tips) * np.pi / tips + rng.uniform(0, np.pi)
    radii = np.where(np.arange(2 * tips) % 2 == 0, 190.0, rng.uniform(0.4, 0.65) * 190)
    polygon = np.stack([200 + radii * np.cos(angles), 200 + radii * np.sin(angles)], axis=1)
    mask = np.zeros((400, 400), np.uint8)
    cv2.fillPoly(mask, [np.round(polygon).astype(np.int32)], 1)
    return mask.astype(bool)


def _blob(rng: np.random.Generator) -> np.ndarray:
    """A smooth random star-convex shape: radius = 1 + a few random low harmonics of the angle."""
    angles = np.linspace(0, 2 * np.pi, 360, endpoint=False)
    radius = np.ones_like(angles)
    for k in range(2, 6):
        radius += rng.uniform(0, 0.25 / k * 2) * np.cos(k * angles + rng.uniform(0, 2 * np.pi))
    radius *= 180 / radius.max()
    polygon = np.stack([200 + radius * np.cos(angles), 200 + radius * np.sin(angles)], axis=1)
    mask = np.zeros((400, 400), np.uint8)
    cv2.fillPoly(mask, [np.round(polygon).astype(np.int32)], 1)
    return mask.astype(bool)


_SHAPE_MAKERS: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
    "horse": _horse,
    "ellipse": _ellipse,
    "star": _star,
    "blob": _blob,
}


def _texture(rng: np.random.Generator, size: tuple[int, int], avoid: str) -> np.ndarray:
    """(h, w, 3) uint8: a random crop of a photo other than ``avoid``; grey ones get a random tint."""
    names = sorted(n for n in _texture_photos() if n != avoid)
    name = names[int(rng.integers(len(names)))]
    photo = _texture_photos()[name]
    h, w = size
    side = int(min(photo.shape[:2]) * rng.uniform(0.4, 0.9))
    y = int(rng.integers(0, photo.shape[0] - side + 1))
    x = int(rng.integers(0, photo.shape[1] - side + 1))
    patch = cv2.resize(photo[y : y + side, x : x + side], (w, h), interpolation=cv2.INTER_LINEAR)
    if name in ("brick", "grass", "gravel"):
        tint = rng.uniform(0.4, 1.2, size=3)
        patch = np.clip(patch * tint, 0, 255).astype(np.uint8)
    return patch


# ---------------------------------------------------------------- scenes


def make_scene(index: int, seed: int = 0) -> Scene:
    """The index-th scene of the seed's sequence (independent of how many others are made)."""
    rng = np.random.default_rng((seed, index))
    bg_names = sorted(backgrounds())
    bg_name = bg_names[index % len(bg_names)]
    shape = SHAPES[(index // len(bg_names) + index) % len(SHAPES)]
    image = backgrounds()[bg_name].astype(np.float32)
    height, width = IMAGE_SIZE

    if shape == "coin":
        coins = coin_cutouts()
        patch, obj = coins[int(rng.integers(len(coins)))]
        tint = rng.uniform(0.6, 1.3, size=3)  # copper, brass or silver
        patch = np.clip(patch * tint, 0, 255).astype(np.uint8)
    else:
        obj = _SHAPE_MAKERS[shape](rng)
        patch = None
    ys, xs = np.nonzero(obj)
    obj = obj[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    if patch is not None:
        patch = patch[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]

    # Object's longest side: 12% to 50% of the image's; small ones are where clicks get hard.
    longest = rng.uniform(0.12, 0.5) * max(height, width)
    factor = min(longest / max(obj.shape), 0.95 * height / obj.shape[0], 0.95 * width / obj.shape[1])
    oh, ow = max(8, round(obj.shape[0] * factor)), max(8, round(obj.shape[1] * factor))
    alpha = cv2.resize(obj.astype(np.float32), (ow, oh), interpolation=cv2.INTER_LINEAR)
    alpha = cv2.GaussianBlur(alpha, (3, 3), 0.8)  # a one-pixel soft edge, as a lens makes
    if patch is None:
        patch = _texture(rng, (oh, ow), avoid=bg_name)
    else:
        patch = cv2.resize(patch, (ow, oh), interpolation=cv2.INTER_LINEAR)

    top = int(rng.integers(0, height - oh + 1))
    left = int(rng.integers(0, width - ow + 1))
    region = image[top : top + oh, left : left + ow]
    region[:] = alpha[:, :, None] * patch + (1 - alpha[:, :, None]) * region
    image += rng.normal(0, 3.0, image.shape).astype(np.float32)
    mask = np.zeros(IMAGE_SIZE, bool)
    mask[top : top + oh, left : left + ow] = alpha >= 0.5
    return Scene(f"{index:02d}-{shape}-on-{bg_name}", np.clip(image, 0, 255).astype(np.uint8), mask)


def make_scenes(count: int = 30, seed: int = 0) -> list[Scene]:
    """``count`` scenes: every background with every shape, at random positions and scales."""
    return [make_scene(i, seed) for i in range(count)]


# ---------------------------------------------------------------- prompts and scoring


def tight_box(mask: np.ndarray) -> np.ndarray:
    """(4,) float32 x0, y0, x1, y1 of a non-empty (H, W) bool mask, x1/y1 exclusive (pixel edges)."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def jittered_box(mask: np.ndarray, rng: np.random.Generator, fraction: float = 0.05) -> np.ndarray:
    """The tight box with each side moved by up to ``fraction`` of the box size, in or out.

    Returns (4,) float32, clipped to the image, as an annotator's hand-drawn box.
    """
    box = tight_box(mask).astype(np.float64)
    size = np.tile(box[2:] - box[:2], 2)
    box += rng.uniform(-fraction, fraction, 4) * size
    height, width = mask.shape
    return np.clip(box, 0, [width, height, width, height]).astype(np.float32)


def interior_point(mask: np.ndarray) -> np.ndarray:
    """(2,) float32 x, y of the mask pixel farthest from its boundary (where a person clicks)."""
    distance = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return np.array([x + 0.5, y + 0.5], np.float32)


def corrective_negative(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray | None:
    """Where an annotator puts a negative click: deep inside the largest false-positive region.

    Returns (2,) float32 x, y, or None when the prediction has no false positive.
    """
    wrong = (predicted & ~truth).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(wrong, connectivity=8)
    if count <= 1:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return interior_point(labels == largest)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks (1.0 when both are empty)."""
    union = int(np.logical_or(a, b).sum())
    return 1.0 if union == 0 else int(np.logical_and(a, b).sum()) / union
