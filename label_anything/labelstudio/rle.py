"""Label Studio's brush RLE, vectorised: mask → ``value.rle`` of a ``brushlabels`` result, and back.

Not COCO RLE. The format is ``@thi.ng/rle-pack`` applied to the mask's RGBA buffer (H·W·4 words,
row-major, a pixel's value repeated over its 4 channels, 255 = painted). A bit stream, most significant bit
first:

- header: 32 bits word count; 5 bits word size − 1; 4 × 4 bits run-field sizes − 1 (a size table);
- chunks: 1 flag bit (1 = repeat, 0 = literal), 2 bits index into the size table, ``size`` bits count − 1,
  then one word (repeat: the word ``count`` times) or ``count`` words (literal);
- zero bits up to a byte boundary.

``label_studio_sdk.converter.brush`` has the reference codec in pure Python (seconds for a photo-sized
mask). Here the encoder works on runs of pixels, not pixels: a mask of a few objects has a few runs per
row, so the bit packing handles thousands of chunks, not millions of words. The decoder needs a Python
loop over chunk headers (each chunk's length is in its header, so chunk *n + 1* cannot be found before
chunk *n* is read), one iteration per run, never per pixel; everything else is numpy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["brush_rle_decode", "brush_rle_encode"]

# What Label Studio's front end and label_studio_sdk write: 8-bit words, run fields of 3, 4, 8 and 16 bits.
_WORD_BITS = 8
_FIELD_BITS = np.array([3, 4, 8, 16])
# The header after the word count: word size - 1 in 5 bits, then each field size - 1 in 4 bits.
_SIZES_CODE = int(np.dot(np.r_[_WORD_BITS, _FIELD_BITS] - 1, 1 << np.array([16, 12, 8, 4, 0])))
_HEADER_BITS = 32 + 5 + 4 * 4
# A field holds count - 1: the field of b bits counts up to 2**b words, and runs longer than the widest
# field can count take several chunks.
_FIELD_MAX = 1 << _FIELD_BITS
_MAX_COUNT = int(_FIELD_MAX[-1])
# Bytes of stream whose headers the decoder unpacks at a time: bounds its memory on huge streams.
_DECODE_BLOCK = 1 << 16


def _pack_bits(codes: np.ndarray, widths: np.ndarray) -> np.ndarray:
    # Bit-pack codes of up to 33 bits each, MSB first. A code starting at bit o spans at most the 5 bytes
    # from o // 8 on, so each code is split into 5 byte-aligned slices, and the slices are summed per
    # output byte: codes never share a bit, so summing is OR-ing, and float64 sums of bytes are exact.
    ends = np.cumsum(widths)
    starts = ends - widths
    # label_studio_sdk pads with 1 to 8 zero bits, never 0; keep its length to stay byte-identical.
    n_bytes = int(ends[-1]) // 8 + 1
    first = starts >> 3
    aligned = codes.astype(np.uint64) << (40 - (starts & 7) - widths).astype(np.uint64)
    out = np.zeros(n_bytes + 5)
    for k in range(5):
        part = (aligned >> np.uint64(32 - 8 * k)) & np.uint64(0xFF)
        out += np.bincount(first + k, weights=part.astype(np.float64), minlength=n_bytes + 5)
    return out[:n_bytes].astype(np.uint8)


def brush_rle_encode(mask: np.ndarray) -> list[int]:
    """Encode a mask as Label Studio brush RLE (``value.rle`` of a ``brushlabels`` result).

    Byte-identical to ``label_studio_sdk.converter.brush.mask2rle(mask * 255)``: every run is a repeat
    chunk in the smallest run field that holds it, runs over 256 words use the 16-bit field, and runs over
    65536 words are split into chunks of 65536 and a remainder.

    Args:
        mask: (H, W) bool, or any dtype where non-zero means painted.

    Returns:
        The byte stream as a list of ints in [0, 255].

    >>> rle = brush_rle_encode(np.array([[False, True, True]]))
    >>> rle
    [0, 0, 0, 12, 57, 27, 252, 96, 19, 255, 128]
    >>> brush_rle_decode(rle, 1, 3)
    array([[False,  True,  True]])
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D (H, W) mask, got shape {mask.shape}")
    pixels = (mask if mask.dtype == bool else mask != 0).ravel()
    n_words = pixels.size * 4
    header_codes, header_widths = np.array([n_words, _SIZES_CODE]), np.array([32, _HEADER_BITS - 32])
    if pixels.size == 0:
        return _pack_bits(header_codes, header_widths).tolist()

    starts = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1
    starts = np.concatenate([[0], starts])
    runs = np.diff(starts, append=pixels.size) * 4  # in words: 4 channels per pixel
    values = np.where(pixels[starts], 255, 0)
    field = np.searchsorted(_FIELD_MAX[:-1], runs)  # the smallest field that counts the whole run

    n_chunks = (runs - 1) // _MAX_COUNT + 1
    last = np.cumsum(n_chunks) - 1
    counts = np.full(int(last[-1]) + 1, _MAX_COUNT)
    counts[last] = runs - _MAX_COUNT * (n_chunks - 1)
    field = np.repeat(field, n_chunks)
    field_bits = _FIELD_BITS[field]
    codes = (
        (1 << (2 + field_bits + _WORD_BITS))
        | (field << (field_bits + _WORD_BITS))
        | ((counts - 1) << _WORD_BITS)
        | np.repeat(values, n_chunks)
    )
    widths = 3 + field_bits + _WORD_BITS
    return _pack_bits(np.r_[header_codes, codes], np.r_[header_widths, widths]).tolist()


def _as_bytes(rle: Sequence[int] | bytes | np.ndarray) -> np.ndarray:
    if isinstance(rle, bytes | bytearray):
        return np.frombuffer(rle, dtype=np.uint8)
    data = np.asarray(rle)
    if data.ndim != 1 or (data.size and data.dtype.kind not in "iu"):
        raise ValueError("brush RLE must be a flat list of ints in [0, 255]")
    if data.size and (data.min() < 0 or data.max() > 255):
        raise ValueError(f"brush RLE must be a flat list of ints in [0, 255], found {data.min()}..{data.max()}")
    return data.astype(np.uint8)


def _chunk_starts(
    windows: np.ndarray, n_words: int, word_bits: int, field_bits: Sequence[int], n_bits: int
) -> np.ndarray:
    # Bit offset of every chunk. windows[b] holds stream bytes b..b+3, enough for the 3 header bits and a
    # 16-bit field from any bit of byte b. Per 3-bit chunk header h: field size, field mask, and how far a
    # repeat chunk, or a literal chunk before its words, reaches.
    size = [field_bits[h & 3] for h in range(8)]
    field_mask = [(1 << s) - 1 for s in size]
    skip = [3 + s + (word_bits if h & 4 else 0) for h, s in enumerate(size)]
    found: list[int] = []
    p, decoded, n_bytes = _HEADER_BITS, 0, n_bits // 8
    while decoded < n_words:
        if p >= n_bits:
            raise ValueError(f"brush RLE is truncated: it ends after {decoded} of {n_words} values")
        block_start = p >> 3
        block_end = min(block_start + _DECODE_BLOCK, n_bytes)
        block = windows[block_start:block_end].tolist()
        limit = block_end * 8
        while decoded < n_words and p < limit:
            found.append(p)
            shift = 29 - (p & 7)
            window = block[(p >> 3) - block_start]
            h = (window >> shift) & 7
            count = ((window >> (shift - size[h])) & field_mask[h]) + 1
            p += skip[h] if h & 4 else skip[h] + count * word_bits
            decoded += count
    if p > n_bits:
        raise ValueError(f"brush RLE is truncated: its last run needs {p - n_bits} more bits")
    return np.array(found, dtype=np.int64)


def brush_rle_decode(
    rle: Sequence[int] | bytes | np.ndarray, height: int, width: int, *, threshold: int = 0
) -> np.ndarray:
    """Decode Label Studio brush RLE, as any writer makes it, to a mask.

    Reads what the front end writes (literal chunks, any of the four run fields, any word size) as well as
    what ``brush_rle_encode`` and ``label_studio_sdk`` write. A pixel is painted when its alpha word (the
    4th of its 4) is above ``threshold``: the front end copies alpha into R, G and B, and antialiased brush
    edges have alpha between 0 and 255. Like the reference decoders, a last run that overshoots the
    buffer is cut at its end.

    Args:
        rle: the byte stream (``value.rle``): list of ints in [0, 255], bytes, or a 1-D integer array.
        height: H of the image (``original_height`` of the result).
        width: W of the image (``original_width``).
        threshold: alpha values above it are painted; 0 means any non-zero alpha.

    Returns:
        (H, W) bool.

    Raises:
        ValueError: the stream is malformed, truncated, or holds a buffer of another size than H·W·4.

    >>> brush_rle_decode(brush_rle_encode(np.eye(2, dtype=bool)), 2, 2)
    array([[ True, False],
           [False,  True]])
    """
    data = _as_bytes(rle)
    if data.size < 7:
        raise ValueError(f"brush RLE is truncated: {data.size} bytes cannot hold its 7-byte header")
    header = int.from_bytes(data[:7].tobytes(), "big")
    n_words = header >> 24
    word_bits = ((header >> 19) & 31) + 1
    field_bits = [((header >> shift) & 15) + 1 for shift in (15, 11, 7, 3)]
    if n_words != height * width * 4:
        raise ValueError(
            f"brush RLE holds {n_words} values but a {height}x{width} mask needs {height * width * 4}"
            " (4 per pixel): the RLE belongs to an image of another size"
        )

    padded = np.concatenate([data, np.zeros(8, dtype=np.uint8)]).astype(np.uint64)
    windows = (padded[:-5] << 24) | (padded[1:-4] << 16) | (padded[2:-3] << 8) | padded[3:-2]
    starts = _chunk_starts(windows, n_words, word_bits, field_bits, data.size * 8)

    # The same header fields again, for all chunks at once.
    head = windows[starts >> 3]
    shift = (29 - (starts & 7)).astype(np.uint64)
    h = ((head >> shift) & np.uint64(7)).astype(np.int64)
    size = np.array(field_bits)[h & 3]
    field = (head >> (shift - size.astype(np.uint64))) & ((1 << size) - 1).astype(np.uint64)
    counts = field.astype(np.int64) + 1
    value_at = starts + 3 + size
    repeat = h >= 4
    if repeat.all():
        run_lengths = counts
    else:
        # A literal chunk of n words is n runs of 1 word, its words one after another.
        n_values = np.where(repeat, 1, counts)
        first = np.cumsum(n_values) - n_values
        nth = np.arange(int(n_values.sum())) - np.repeat(first, n_values)
        value_at = np.repeat(value_at, n_values) + nth * word_bits
        run_lengths = np.repeat(np.where(repeat, counts, 1), n_values)

    # Words are at most 32 bits and start at any bit of a byte: read 5 bytes around each.
    b = value_at >> 3
    five = (padded[b] << 32) | (padded[b + 1] << 24) | (padded[b + 2] << 16) | (padded[b + 3] << 8) | padded[b + 4]
    values = (five >> (40 - (value_at & 7) - word_bits).astype(np.uint64)) & np.uint64((1 << word_bits) - 1)

    # Pixel i is decided by word 4i + 3 (alpha); the run [s, e) of words holds it iff s // 4 <= i < e // 4.
    ends = np.minimum(np.cumsum(run_lengths), n_words)
    pixel_ends = ends // 4
    pixel_runs = np.diff(pixel_ends, prepend=0)
    return np.repeat(values > threshold, pixel_runs).reshape(height, width)
