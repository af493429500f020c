"""label_anything.labelstudio.rle against label_studio_sdk's reference brush codec."""

from __future__ import annotations

import doctest

import cv2
import numpy as np
import pytest
import skimage.data
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from label_studio_sdk.converter import brush

from label_anything.labelstudio import rle as brush_rle
from label_anything.labelstudio.rle import brush_rle_decode, brush_rle_encode

masks_2d = arrays(bool, st.tuples(st.integers(1, 32), st.integers(1, 32)))


def blocky_masks(max_side: int = 300) -> st.SearchStrategy[np.ndarray]:
    """Masks of a few rectangles: long runs, so every run field and the 65536-word split get used."""

    @st.composite
    def build(draw: st.DrawFn) -> np.ndarray:
        h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
        mask = np.zeros((h, w), dtype=bool)
        for _ in range(draw(st.integers(0, 4))):
            y0, x0 = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
            y1, x1 = draw(st.integers(y0, h)), draw(st.integers(x0, w))
            mask[y0:y1, x0:x1] = draw(st.booleans())
        return mask

    return build()


def sdk_encode(mask: np.ndarray) -> list[int]:
    return brush.mask2rle(mask.astype(np.uint8) * 255)


def sdk_decode(rle: list[int], height: int, width: int) -> np.ndarray:
    """The RGBA buffer as label_studio_sdk decodes it, (H, W, 4) uint8."""
    return brush.decode_rle(rle).reshape(height, width, 4)


def rgba_of(mask: np.ndarray) -> np.ndarray:
    return np.repeat(mask[..., None].astype(np.uint8) * 255, 4, axis=2)


def rle_pack(words: np.ndarray, word_bits: int = 8, field_bits: tuple[int, ...] = (3, 4, 8, 16)) -> list[int]:
    """A slow, independent rle-pack encoder that, like Label Studio's front end, writes literal chunks.

    Words that do not repeat go into literal chunks; repeats into repeat chunks. Each chunk takes the
    smallest run field that holds its count, and is split where the largest field is full.
    """
    limits = [1 << size for size in field_bits]
    bits = [f"{len(words):032b}", f"{word_bits - 1:05b}", *(f"{size - 1:04b}" for size in field_bits)]

    def chunk(repeat: bool, values: list[int]) -> None:
        count = len(values) if not repeat else values[1]
        field = next(i for i, limit in enumerate(limits) if count <= limit)
        bits.append(f"{int(repeat)}{field:02b}{count - 1:0{field_bits[field]}b}")
        bits.extend(f"{v:0{word_bits}b}" for v in (values[:1] if repeat else values))

    literal: list[int] = []
    values = [int(v) for v in words]
    i = 0
    while i < len(values):
        j = i
        while j < len(values) and values[j] == values[i]:
            j += 1
        if j - i == 1:
            literal.append(values[i])
            if len(literal) == limits[-1]:
                chunk(False, literal)
                literal = []
        else:
            if literal:
                chunk(False, literal)
                literal = []
            for start in range(i, j, limits[-1]):
                chunk(True, [values[i], min(j - start, limits[-1])])
        i = j
    if literal:
        chunk(False, literal)
    stream = "".join(bits)
    stream += "0" * (-len(stream) % 8)
    return [int(stream[k : k + 8], 2) for k in range(0, len(stream), 8)]


# ---------------------------------------------------------------- our encoder


@settings(max_examples=200, deadline=None)
@given(st.one_of(masks_2d, blocky_masks()))
def test_encode_is_byte_identical_to_the_sdk_and_decodes_with_it(mask: np.ndarray) -> None:
    ours = brush_rle_encode(mask)
    assert ours == sdk_encode(mask)
    assert np.array_equal(sdk_decode(ours, *mask.shape), rgba_of(mask))


@settings(max_examples=200, deadline=None)
@given(st.one_of(masks_2d, blocky_masks()))
def test_round_trips(mask: np.ndarray) -> None:
    assert np.array_equal(brush_rle_decode(brush_rle_encode(mask), *mask.shape), mask)
    assert np.array_equal(brush_rle_decode(sdk_encode(mask), *mask.shape), mask)


@pytest.mark.parametrize(
    "shape",
    [(1, 1), (1, 2), (2, 1), (3, 5), (7, 13), (1, 16384), (1, 16385), (1, 16383), (257, 255), (120, 641)],
)
@pytest.mark.parametrize("fill", ["empty", "full", "half", "checker"])
def test_edge_cases_match_the_sdk(shape: tuple[int, int], fill: str) -> None:
    # 16384 pixels are exactly 65536 words: the longest run one chunk can hold.
    mask = np.zeros(shape, dtype=bool)
    if fill == "full":
        mask[:] = True
    elif fill == "half":
        mask[:, : shape[1] // 2] = True
    elif fill == "checker":
        mask = (np.indices(shape).sum(axis=0) % 2).astype(bool)
    ours = brush_rle_encode(mask)
    assert ours == sdk_encode(mask)
    assert all(isinstance(b, int) and 0 <= b <= 255 for b in ours)
    assert np.array_equal(brush_rle_decode(ours, *shape), mask)


def test_photo_sized_mask() -> None:
    # A horse silhouette the size of a 12-megapixel photo: about 5000 runs.
    small = ~skimage.data.horse()
    h, w = 3024, 4032
    rows = np.arange(h) * small.shape[0] // h
    cols = np.arange(w) * small.shape[1] // w
    mask = small[rows][:, cols]
    ours = brush_rle_encode(mask)
    assert ours == sdk_encode(mask)
    assert np.array_equal(brush_rle_decode(ours, h, w), mask)


def test_encode_accepts_non_bool_masks() -> None:
    mask = np.array([[0, 3], [255, 0]], dtype=np.uint8)
    assert brush_rle_encode(mask) == brush_rle_encode(mask != 0)
    with pytest.raises(ValueError, match="2-D"):
        brush_rle_encode(np.zeros((2, 2, 4), dtype=bool))


# ---------------------------------------------------------------- our decoder, on other writers' streams


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 12),
    st.integers(1, 12),
    st.lists(st.integers(1, 16), min_size=4, max_size=4),
    st.sampled_from([1, 2, 5, 8, 12]),
    st.lists(st.tuples(st.sampled_from([0, 1, 2, 3]), st.integers(1, 40)), min_size=1, max_size=60),
)
def test_decodes_literal_chunks_any_field_sizes_and_word_sizes(
    height: int, width: int, field_bits: list[int], word_bits: int, runs: list[tuple[int, int]]
) -> None:
    # Front-end-like streams: runs and singletons mixed, so literal and repeat chunks alternate, with
    # words that are not 0/255 and channels that differ; only alpha (the 4th word of a pixel) counts.
    top = (1 << word_bits) - 1
    levels = np.array([0, top, 1, top // 2])
    words = np.repeat(levels[[v for v, _ in runs]], [n for _, n in runs])
    words = np.resize(words, height * width * 4)
    stream = rle_pack(words, word_bits, tuple(field_bits))
    if word_bits <= 8:  # the sdk decodes into uint8; this checks the test's own encoder
        assert np.array_equal(brush.decode_rle(stream), words)
    alpha = words.reshape(height, width, 4)[..., 3]
    assert np.array_equal(brush_rle_decode(stream, height, width), alpha > 0)
    assert np.array_equal(brush_rle_decode(stream, height, width, threshold=top // 2), alpha > top // 2)


def test_decodes_long_literal_chunks() -> None:
    # Neighbouring words always differ: literal chunks only, 65536 words each but the last.
    words = np.arange(140_000) * 7919 % 251
    stream = rle_pack(words)
    assert np.array_equal(brush.decode_rle(stream), words)
    alpha = words.reshape(350, 100, 4)[..., 3]
    assert np.array_equal(brush_rle_decode(stream, 350, 100), alpha > 0)
    assert np.array_equal(brush_rle_decode(stream, 350, 100, threshold=100), alpha > 100)


def test_decodes_antialiased_alpha_as_painted() -> None:
    words = np.repeat(np.array([0, 1, 128, 254, 255], dtype=np.uint8), 4)
    stream = brush.encode_rle(words)
    assert brush_rle_decode(stream, 1, 5).tolist() == [[False, True, True, True, True]]
    assert brush_rle_decode(stream, 1, 5, threshold=127).tolist() == [[False, False, True, True, True]]


def test_decode_accepts_bytes_and_arrays() -> None:
    mask = np.eye(5, dtype=bool)
    rle = brush_rle_encode(mask)
    assert np.array_equal(brush_rle_decode(bytes(rle), 5, 5), mask)
    assert np.array_equal(brush_rle_decode(np.array(rle, dtype=np.int64), 5, 5), mask)


# ---------------------------------------------------------------- bad input


def test_wrong_size_is_a_clear_error() -> None:
    rle = brush_rle_encode(np.ones((4, 6), dtype=bool))
    with pytest.raises(ValueError, match=r"holds 96 values but a 5x4 mask needs 80 .* another size"):
        brush_rle_decode(rle, 5, 4)
    with pytest.raises(ValueError, match="holds 96 values but a 6x5 mask needs 120"):
        brush_rle_decode(rle, 6, 5)


@pytest.mark.parametrize("keep", [0, 3, 6, 7, 8, -1])
def test_truncated_input_raises(keep: int) -> None:
    mask = np.zeros((40, 50), dtype=bool)
    mask[5:30, 10:20] = True
    mask[::7, ::3] ^= True  # many runs, so cutting the stream anywhere loses some
    rle = brush_rle_encode(mask)
    cut = rle[:keep] if keep >= 0 else rle[: len(rle) // 2]
    with pytest.raises(ValueError, match="truncated"):
        brush_rle_decode(cut, 40, 50)


def test_last_byte_missing_raises() -> None:
    mask = np.zeros((3, 3), dtype=bool)
    mask[1, 1] = True
    rle = brush_rle_encode(mask)
    for end in range(7, len(rle) - 1):  # the last byte is padding only
        with pytest.raises(ValueError, match="truncated"):
            brush_rle_decode(rle[:end], 3, 3)


@pytest.mark.parametrize("bad", [[0, 0, 0, 4, 256, 0, 0, 0], [0, 0, -1, 4, 0, 0, 0, 0], [[0, 1]], ["a"] * 8])
def test_not_bytes_is_a_clear_error(bad: list) -> None:
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        brush_rle_decode(bad, 1, 1)


def test_docstring_examples_run() -> None:
    assert doctest.testmod(brush_rle).failed == 0


# ---------------------------------------------------------------- the decoder's walkers, against a reference


def reference_decode(stream: list[int], height: int, width: int, threshold: int = 0) -> np.ndarray:
    """The format read bit by bit in plain Python: what ``brush_rle_decode`` answers, or raises, by
    definition (a stream of valid bytes)."""
    data = bytes(stream)
    if len(data) < 7:
        raise ValueError(f"brush RLE is truncated: {len(data)} bytes cannot hold its 7-byte header")
    bits = int.from_bytes(data, "big") << 64  # zero bits after the end, as far as a chunk reads
    n_bits = 8 * len(data)

    def read(at: int, size: int) -> int:
        return (bits >> (n_bits + 64 - at - size)) & ((1 << size) - 1)

    n_words, word_bits = read(0, 32), read(32, 5) + 1
    fields = [read(37 + 4 * k, 4) + 1 for k in range(4)]
    if n_words != height * width * 4:
        raise ValueError(f"brush RLE holds {n_words} values but a {height}x{width} mask needs {height * width * 4}")
    p, runs, decoded = 53, [], 0
    while decoded < n_words:
        if p >= n_bits:
            raise ValueError(f"brush RLE is truncated: it ends after {decoded} of {n_words} values")
        repeat, size = read(p, 1), fields[read(p + 1, 2)]
        count = read(p + 3, size) + 1
        p += 3 + size
        end = p + word_bits * (1 if repeat else count)
        if end > n_bits:  # refused below, whatever the words
            runs.append((0, count))
        elif repeat:
            runs.append((read(p, word_bits), count))
        else:
            runs.extend((read(p + k * word_bits, word_bits), 1) for k in range(count))
        p = end
        decoded += count
    if p > n_bits:
        raise ValueError(f"brush RLE is truncated: its last run needs {p - n_bits} more bits")
    words = np.repeat([v for v, _ in runs], [n for _, n in runs])[:n_words] if runs else np.zeros(0, int)
    return (words[3::4] > threshold).reshape(height, width)


def outcome(decode, *args, **kwargs):
    try:
        return "ok", decode(*args, **kwargs)
    except ValueError as error:
        return "error", str(error).split(" (4 per pixel)")[0]


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[int], int, int]:
    """Valid streams of binary masks, periodic ones (checkerboards), front-end-like ones (literal chunks,
    any field and word sizes), random bytes after a header, and valid streams cut, corrupted or extended."""
    h, w = draw(st.integers(1, 120)), draw(st.integers(1, 120))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["mask", "checker", "literal", "garbage", "cut", "extended"]))
    mask = rng.random((h, w)) < draw(st.floats(0, 1))
    if kind == "checker":
        mask = np.indices((h, w)).sum(axis=0) % draw(st.integers(2, 4)) == 0
    if kind == "literal":
        h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
        word_bits = draw(st.sampled_from([1, 2, 5, 8, 12]))
        levels = np.array([0, (1 << word_bits) - 1, 1, (1 << word_bits) // 2])
        runs = rng.integers(1, 40, size=int(rng.integers(1, 200)))
        words = np.resize(np.repeat(levels[rng.integers(0, 4, size=len(runs))], runs), h * w * 4)
        return rle_pack(words, word_bits, tuple(draw(st.lists(st.integers(1, 16), min_size=4, max_size=4)))), h, w
    stream = brush_rle_encode(mask)
    if kind == "garbage":
        stream = stream[:7] + rng.integers(0, 256, size=int(rng.integers(0, 4000))).tolist()
    elif kind == "cut":
        stream = stream[: int(rng.integers(0, len(stream) + 1))]
        if stream and draw(st.booleans()):
            stream[int(rng.integers(0, len(stream)))] = int(rng.integers(0, 256))
    elif kind == "extended":
        stream = stream + rng.integers(0, 256, size=int(rng.integers(1, 300))).tolist()
    return stream, h, w


@pytest.mark.parametrize("min_blocks", [1, 8, None])
@settings(max_examples=300, deadline=None)
@given(case=streams(), threshold=st.sampled_from([0, 1, 127]))
def test_walkers_decode_what_the_reference_does_and_refuse_what_it_refuses(min_blocks, case, threshold) -> None:
    """Cut into blocks read by walkers in step (however few bits a block has), or read chunk by chunk: the
    same mask as the reference, or the same reason to refuse the stream."""
    stream, h, w = case
    with pytest.MonkeyPatch.context() as patch:
        if min_blocks is not None:
            patch.setattr(brush_rle, "_DECODE_MIN_BLOCKS", min_blocks)
        ours = outcome(brush_rle_decode, stream, h, w, threshold=threshold)
    theirs = outcome(reference_decode, stream, h, w, threshold=threshold)
    assert ours[0] == theirs[0]
    if ours[0] == "ok":
        assert ours[1].dtype == bool and np.array_equal(ours[1], theirs[1])
    else:
        assert ours[1] == theirs[1]


@pytest.mark.parametrize(
    "mask",
    [
        np.indices((600, 800)).sum(axis=0) % 2 == 0,  # the shortest runs, periodic: walkers out of step stay so
        np.random.default_rng(4).random((600, 800)) < 0.5,
        cv2.resize(np.random.default_rng(5).standard_normal((150, 200)).astype(np.float32), (800, 600)) > 0.4,
    ],
    ids=["checkerboard", "speckle", "fragmented"],
)
def test_large_streams_match_the_sdk(mask: np.ndarray) -> None:
    rle = brush_rle_encode(mask)
    assert len(rle) * 8 > brush_rle._DECODE_MIN_BLOCKS**2  # read by walkers
    assert np.array_equal(brush_rle_decode(rle, *mask.shape), sdk_decode(rle, *mask.shape)[..., 3] > 0)


def test_decoding_is_linear_in_the_stream(monkeypatch) -> None:
    """Checkerboards (periodic, every run one pixel) and random bytes after a header: the walkers and the
    chunk-by-chunk fallbacks together read each chunk a bounded number of times."""
    read = []
    real_walk, real_next = brush_rle._Chunks.walk, brush_rle._Chunks.next_starts

    def walk(self, p, end, stop=None):
        found, q = real_walk(self, p, end, stop)
        read.append(len(found))
        return found, q

    def next_starts(self, p, binary=False):
        read.append(len(p))
        return real_next(self, p, binary)

    monkeypatch.setattr(brush_rle._Chunks, "walk", walk)
    monkeypatch.setattr(brush_rle._Chunks, "next_starts", next_starts)
    rng = np.random.default_rng(0)
    for stream, h, w in [
        (brush_rle_encode(np.indices((400, 1000)).sum(axis=0) % 2 == 0), 400, 1000),
        (brush_rle_encode(rng.random((500, 500)) < 0.5), 500, 500),
        (brush_rle_encode(np.zeros((700, 700), dtype=bool))[:7] + rng.integers(0, 256, 300_000).tolist(), 700, 700),
    ]:
        read.clear()
        outcome(brush_rle_decode, stream, h, w)
        # A chunk is at least 5 bits: the walks read at most a few times the chunks a stream can hold.
        assert sum(read) <= 3 * len(stream) * 8 / 5 + 4096, (sum(read), len(stream))
