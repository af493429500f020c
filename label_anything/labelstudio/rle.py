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
row, so the bit packing handles thousands of chunks, not millions of words. The decoder must find where
each chunk starts, and each chunk's length is in its header: it reads the stream in blocks, with walkers
in step that guess and fall in step with the chunks (``_chunk_starts``), and a Python loop over chunks only
for short streams and where a walker did not fall in step; everything else is numpy.
"""

from __future__ import annotations

import functools
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
# By run length in words (1 to 65536): the smallest field that counts it; and each field's repeat-chunk
# header bits (flag, field index) above its count and word.
_RUN_FIELD = np.searchsorted(_FIELD_MAX[:-1], np.arange(_MAX_COUNT + 1))
_CHUNK_HEAD = np.array(
    [(1 << (2 + int(b) + _WORD_BITS)) | (f << (int(b) + _WORD_BITS)) for f, b in enumerate(_FIELD_BITS)],
    dtype=np.uint64,
)
# The decoder's walkers start this many bits before their block (see ``_chunk_starts``), in which a walk
# from a guessed bit falls in step with the chunks (in a binary stream, 99 % within 25 steps); a chunk
# longer than this is one a guessing walker does not follow.
_DECODE_LEAD = 256
# Streams of fewer blocks than this (each of sqrt(bits) bits: under 25 KB) are read one chunk at a time.
_DECODE_MIN_BLOCKS = 450
# Rounds of planning the blocks again, and chunks walked in step to meet a walker, at most (see
# ``_chunk_starts``): what is still unplanned then is read one chunk at a time.
_DECODE_REPLANS = 4
_DECODE_CATCH_UP = 64


def _pack_bits(codes: np.ndarray, widths: np.ndarray) -> np.ndarray:
    # Bit-pack codes (uint64) of up to 33 bits each, MSB first, into 64-bit words: the codes of a word are a
    # run (they are in order), OR-ed in one reduceat; a code that spills into the next word adds its low
    # bits there (at most one per word boundary).
    ends = np.cumsum(widths)
    starts = ends - widths
    # label_studio_sdk pads with 1 to 8 zero bits, never 0; keep its length to stay byte-identical.
    n_bytes = int(ends[-1]) // 8 + 1
    word = starts >> 6
    spill = (starts & 63) + widths - 64  # > 0: bits that go into the next word
    over = spill > 0
    shift = np.abs(spill).astype(np.uint64)
    head = np.where(over, codes >> shift, codes << shift)
    words = np.zeros(n_bytes // 8 + 2, dtype=np.uint64)
    first = np.flatnonzero(np.diff(word, prepend=-1))
    words[word[first]] = np.bitwise_or.reduceat(head, first)
    over = np.flatnonzero(over)
    words[word[over] + 1] |= codes[over] << (np.uint64(64) - shift[over])
    return words.astype(">u8").view(np.uint8)[:n_bytes]


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
    header_codes, header_widths = [n_words, _SIZES_CODE], [32, _HEADER_BITS - 32]
    if pixels.size == 0:
        return _pack_bits(np.array(header_codes, dtype=np.uint64), np.array(header_widths)).tolist()

    starts = np.r_[0, np.flatnonzero(pixels[1:] != pixels[:-1]) + 1]
    runs = np.diff(starts, append=pixels.size) * 4  # in words: 4 channels per pixel
    values = np.where(pixels[starts], 255, 0).astype(np.uint64)
    if runs.max() <= _MAX_COUNT:  # one chunk per run
        field, counts, n_codes = np.take(_RUN_FIELD, runs), runs, len(runs)
    else:
        n_chunks = (runs - 1) // _MAX_COUNT + 1
        last = np.cumsum(n_chunks) - 1
        counts = np.full(int(last[-1]) + 1, _MAX_COUNT)
        counts[last] = runs - _MAX_COUNT * (n_chunks - 1)
        field = np.repeat(np.searchsorted(_FIELD_MAX[:-1], runs), n_chunks)  # the smallest that counts the run
        values, n_codes = np.repeat(values, n_chunks), len(counts)
    codes = np.empty(n_codes + 2, dtype=np.uint64)
    widths = np.empty(n_codes + 2, dtype=np.int64)
    codes[:2], widths[:2] = header_codes, header_widths
    codes[2:] = np.take(_CHUNK_HEAD, field) | ((counts - 1).astype(np.uint64) << np.uint64(_WORD_BITS)) | values
    widths[2:] = np.take(3 + _FIELD_BITS + _WORD_BITS, field)
    return _pack_bits(codes, widths).tolist()


def _as_bytes(rle: Sequence[int] | bytes | np.ndarray) -> np.ndarray:
    if isinstance(rle, bytes | bytearray):
        return np.frombuffer(rle, dtype=np.uint8)
    if isinstance(rle, list | tuple) and not (rle and type(rle[0]) is bool):
        # What JSON gives: a list of ints, 15 times faster to take in as bytes than through np.asarray. A
        # list it refuses (not ints, out of range) goes the long way, for the reason in the message.
        try:
            return np.frombuffer(bytearray(rle), dtype=np.uint8)
        except (TypeError, ValueError):
            pass
    data = np.asarray(rle)
    if data.ndim != 1 or (data.size and data.dtype.kind not in "iu"):
        raise ValueError("brush RLE must be a flat list of ints in [0, 255]")
    if data.size and (data.min() < 0 or data.max() > 255):
        raise ValueError(f"brush RLE must be a flat list of ints in [0, 255], found {data.min()}..{data.max()}")
    return data.astype(np.uint8)


@functools.lru_cache(maxsize=4)
def _chunk_lengths(word_bits: int, field_bits: tuple[int, ...]) -> np.ndarray:
    """A chunk's length in bits by the ``3 + max(field_bits)`` bits it starts with (its header and widest
    count field): a repeat chunk holds one word, a literal chunk ``count`` words. At most 2**19 entries."""
    wide = max(field_bits)
    t = np.arange(1 << (3 + wide), dtype=np.int64)
    h = t >> wide
    size = np.array(field_bits, dtype=np.int64)[h & 3]
    count = ((t >> (wide - size)) & ((1 << size) - 1)) + 1
    return 3 + size + np.where(h >= 4, word_bits, count * word_bits)


class _Chunks:
    """Reading chunk headers: ``windows[b]`` (uint32) holds stream bytes b..b+3, enough for the 3 header bits
    and a 16-bit count field from any bit of byte b."""

    def __init__(self, windows: np.ndarray, word_bits: int, field_bits: Sequence[int]) -> None:
        h = np.arange(8)
        self.windows = windows
        self.word_bits = word_bits
        self.field_bits = tuple(field_bits)
        self.size = np.array(field_bits, dtype=np.int64)[h & 3]
        self.mask = (1 << self.size) - 1
        self.fixed = 3 + self.size + np.where(h >= 4, word_bits, 0)
        self.per = np.where(h >= 4, 0, word_bits)

    def read(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For chunk starts ``p`` (int64): header h, count (words), and the start of the next chunk."""
        window = self.windows[p >> 3]
        shift = 29 - (p & 7)
        h = (window >> shift) & 7
        count = ((window >> (shift - self.size[h])) & self.mask[h]) + 1
        return h, count, p + self.fixed[h] + self.per[h] * count

    def values(self, p: np.ndarray, h: np.ndarray) -> np.ndarray:
        """The first word of chunks ``p`` with headers ``h`` (words of at most 25 bits)."""
        at = p + 3 + self.size[h]
        return (self.windows[at >> 3] >> (32 - (at & 7) - self.word_bits)) & ((1 << self.word_bits) - 1)

    def next_starts(self, p: np.ndarray, binary: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The start of the chunk after each of ``p`` (one table lookup each), and whether that chunk is
        unlike the stream's: longer than ``_DECODE_LEAD`` bits, or with ``binary`` (the stream's first chunks
        all repeat 0 or the largest word), a literal chunk or a repeat of another word."""
        wide = max(self.field_bits)
        t = (self.windows[p >> 3] >> (29 - wide - (p & 7))) & ((1 << (3 + wide)) - 1)
        after = p + _chunk_lengths(self.word_bits, self.field_bits)[t]
        unlike = after - p > _DECODE_LEAD
        if binary:
            h = t >> wide
            v = self.values(p, h)
            unlike |= (h < 4) | ((v != 0) & (v != (1 << self.word_bits) - 1))
        return after, unlike

    def binary(self, n_bits: int) -> bool:
        """Whether the stream's first chunks (up to 4096 bits) all repeat 0 or the largest word, as encoders
        of binary masks write them (label_studio_sdk, ``brush_rle_encode``, the front end's brush)."""
        if self.word_bits > 25:
            return False
        first = np.array(self.walk(_HEADER_BITS, min(n_bits, _HEADER_BITS + 4096))[0], dtype=np.int64)
        h = self.read(first)[0]
        v = self.values(first, h)
        return bool(len(first)) and bool(np.all((h >= 4) & ((v == 0) | (v == (1 << self.word_bits) - 1))))

    def walk(self, p: int, end: int, stop: np.ndarray | None = None) -> tuple[list[int], int]:
        """One chunk after another from ``p`` while before ``end`` (and not on a ``stop`` bit), in Python:
        the starts passed, and where the walk ended."""
        if p >= end:
            return [], p
        size, mask, fixed, per = (t.tolist() for t in (self.size, self.mask, self.fixed, self.per))
        first = p >> 3
        windows = self.windows[first : ((end - 1) >> 3) + 1].tolist()
        # The stop bits ahead, in order, and the next of them: p only grows.
        marks = (np.flatnonzero(stop[p:end]) + p).tolist() if stop is not None else []
        marks.append(end)
        m = 0
        found = []
        while p < end:
            while marks[m] < p:
                m += 1
            if marks[m] == p:
                break
            found.append(p)
            shift = 29 - (p & 7)
            window = windows[(p >> 3) - first]
            h = (window >> shift) & 7
            p += fixed[h] + per[h] * (((window >> (shift - size[h])) & mask[h]) + 1)
        return found, p


def _walk_all(
    chunks: _Chunks,
    start: np.ndarray,
    end: np.ndarray,
    n_bits: int,
    meet: np.ndarray | None = None,
    max_steps: int | None = None,
    binary: bool = False,
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray]:
    """Walks in step, one chunk a step (numpy): walk i from ``start[i]`` while before ``end[i]`` (and for
    at most ``max_steps``).

    A chunk unlike the stream's (``_Chunks.next_starts``) is a *leap*. A guessing walker (``meet`` None)
    reads many when out of step (long literals, which would take it past most of its block; in a binary
    stream, other words): it leaves the chunk and tries the next bit, so it falls in step within a few dozen
    bits. A walk of the true chunks (``meet`` given) follows every chunk, and stops on a bit of ``meet``.

    Returns the walks' steps (per step: which walks were under way, and their chunk starts), the chunk
    starts the walks leapt from, and where each walk ended.
    """
    ids = np.arange(len(start))
    p, stop = start.copy(), end.copy()
    exits = np.empty(len(start), dtype=np.int64)
    walkers: list[np.ndarray] = []
    starts: list[np.ndarray] = []
    leapt: list[np.ndarray] = []
    while ids.size:
        if len(walkers) == max_steps:
            exits[ids] = p
            break
        done = p >= stop
        if meet is not None:
            done |= meet[np.minimum(p, n_bits)]
        if done.any():
            exits[ids[done]] = p[done]
            keep = ~done
            ids, p, stop = ids[keep], p[keep], stop[keep]
            if not ids.size:
                break
        walkers.append(ids)
        starts.append(p)
        after, leap = chunks.next_starts(p, binary and meet is None)
        if leap.any():
            leapt.append(p[leap])
            if meet is None:
                after = np.where(leap, p + 1, after)
        p = after
    return walkers, starts, np.concatenate(leapt) if leapt else np.zeros(0, dtype=np.int64), exits


def _walked_to(
    chunks: _Chunks, flat: np.ndarray, leapt: np.ndarray, at: np.ndarray, ends: np.ndarray, exits: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Following walkers from their chunk ``flat[at]``, whose chunks end at ``flat[ends - 1]``: where each
    stops in ``flat`` (after its first leap from there on, if any, else at ``ends``), and where the chunks
    go on from there (the leap's end, else where the walker left its block, ``exits``)."""
    if not len(leapt):
        return ends, exits
    first = leapt[np.minimum(np.searchsorted(leapt, at), len(leapt) - 1)]
    leaps = (first >= at) & (first < ends)
    stop = np.where(leaps, first + 1, ends)
    return stop, np.where(leaps, chunks.read(flat[np.where(leaps, first, 0)])[2], exits)


def _gathered(walkers: list[np.ndarray], starts: list[np.ndarray], begin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The steps of ``_walk_all`` as each walk's chunk starts at or after its ``begin``, walk after walk
    (increasing where walk i + 1 begins after walk i ends), and where each walk's starts end in that array."""
    wide = max((int(p.max()) for p in starts if p.size), default=0) >= 2**31
    grid = np.full((len(begin), len(starts)), -1, dtype=np.int64 if wide else np.int32)
    for step, (ids, p) in enumerate(zip(walkers, starts, strict=True)):
        grid[ids, step] = p
    mine = grid >= begin[:, None]
    return grid[mine].astype(np.int64), np.cumsum(np.count_nonzero(mine, axis=1))


def _chunk_starts(chunks: _Chunks, n_bits: int) -> np.ndarray:
    """The start of every chunk from the header on, up to the end of the stream (int64, increasing).

    Each chunk's length is in its header, so chunk n + 1 is found only once chunk n is read. The stream is
    cut into blocks, and one walker per block, started ``_DECODE_LEAD`` bits before it at a guessed bit,
    reads chunk after chunk, all walkers in step (numpy, one step per chunk of a block). A walk from a wrong
    guess falls in step with the true chunks within a few dozen bits (it leaves chunks unlike the stream's,
    see ``_walk_all``): from there on its chunks are the true ones. Then the true chunks are walked from
    where each walker leaves its block, in step again, each until it meets the next block's walker (at once,
    mostly). Last, one pass over the blocks joins the pieces; where the true chunks do not enter a block
    where planned (its walker before never fell in step, or a leap), they are read one at a time until they
    meet its walker. Every answer is exact, the cost linear.
    """
    span = n_bits - _HEADER_BITS
    n_blocks = int(np.sqrt(max(span, 0)))
    if n_blocks < _DECODE_MIN_BLOCKS:
        return np.array(chunks.walk(_HEADER_BITS, n_bits)[0], dtype=np.int64)
    bounds = _HEADER_BITS + (np.arange(n_blocks + 1) * span) // n_blocks
    begin, end = bounds[:-1], bounds[1:]
    guess = np.maximum(begin - _DECODE_LEAD, _HEADER_BITS)
    walkers, starts, leapt, exits = _walk_all(chunks, guess, end, n_bits, binary=chunks.binary(n_bits))
    flat, ends = _gathered(walkers, starts, begin)
    on_walk = np.zeros(n_bits + 1, dtype=bool)
    on_walk[flat] = True
    leap_at = np.zeros(n_bits + 1, dtype=bool)
    leap_at[leapt] = True
    leapt = np.flatnonzero(leap_at[flat])  # indices into flat of the chunks its walkers leapt from
    # The plan: the true chunks enter block k where walker k - 1 left its block; from there they are walked
    # in step to walker k (if it is not there already), whose chunks they are from then on. Where they leave
    # block k - 1 elsewhere (walker k - 1 never fell in step), block k is planned again from there.
    entry = np.r_[_HEADER_BITS, exits[:-1]]
    after = np.zeros(n_blocks, dtype=np.int64)
    joined = np.zeros(n_blocks, dtype=bool)
    at = np.zeros(n_blocks, dtype=np.int64)
    stop = np.zeros(n_blocks, dtype=np.int64)
    before: dict[int, np.ndarray] = {}
    blocks = np.arange(n_blocks)
    for replan in range(_DECODE_REPLANS + 1):
        if replan:
            entry[blocks] = after[blocks - 1]
        late = blocks[(entry[blocks] < end[blocks]) & ~on_walk[np.minimum(entry[blocks], n_bits)]]
        walkers, starts, _, met = _walk_all(chunks, entry[late], end[late], n_bits, on_walk, _DECODE_CATCH_UP)
        caught, caught_ends = _gathered(walkers, starts, begin[late])
        if late.size:
            before.update(zip(late.tolist(), np.split(caught, caught_ends[:-1]), strict=True))
        for k in np.setdiff1d(blocks, late).tolist():
            before.pop(k, None)
        meet = entry[blocks].copy()
        meet[np.searchsorted(blocks, late)] = met
        joined[blocks] = (meet < end[blocks]) & on_walk[np.minimum(meet, n_bits)]
        at[blocks] = np.searchsorted(flat, meet)
        stop[blocks], leaves = _walked_to(chunks, flat, leapt, at[blocks], ends[blocks], exits[blocks])
        after[blocks] = np.where(joined[blocks], leaves, meet)
        blocks = np.flatnonzero((after[:-1] >= end[:-1]) & (after[:-1] < end[1:]) & (after[:-1] != entry[1:])) + 1
        if not blocks.size:
            break
    plan = [v.tolist() for v in (entry, joined, at, stop, after, np.searchsorted(end, after, side="right"))]
    entry, joined, at, stop, after, next_block = plan
    pieces: list[np.ndarray | list[int]] = []
    p, k = _HEADER_BITS, 0
    while p < n_bits:
        if p == entry[k]:  # as planned
            if k in before:
                pieces.append(before[k])
            if joined[k]:
                pieces.append(flat[at[k] : stop[k]])
            p, k = after[k], next_block[k]
            continue
        if on_walk[p]:
            i = np.searchsorted(flat, [p])
            j, p = (int(v[0]) for v in _walked_to(chunks, flat, leapt, i, ends[k : k + 1], exits[k : k + 1]))
            pieces.append(flat[int(i[0]) : j])
        else:
            found, p = chunks.walk(p, int(end[k]), on_walk)
            pieces.append(found)
        k = int(np.searchsorted(end, p, side="right"))
    return np.concatenate([np.asarray(piece, dtype=np.int64) for piece in pieces])


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

    padded = np.concatenate([data, np.zeros(8, dtype=np.uint8)]).astype(np.uint32)
    windows = (padded[:-5] << 24) | (padded[1:-4] << 16) | (padded[2:-3] << 8) | padded[3:-2]
    n_bits = data.size * 8
    starts = np.zeros(0, dtype=np.int64)
    h = counts = decoded = starts
    if n_words:
        chunks = _Chunks(windows, word_bits, field_bits)
        starts = _chunk_starts(chunks, n_bits)
        h, counts, after = chunks.read(starts)
        decoded = np.cumsum(counts)
        last = int(np.searchsorted(decoded, n_words))  # the chunk that reaches the last word
        if last == len(starts):
            done = int(decoded[-1]) if len(decoded) else 0
            raise ValueError(f"brush RLE is truncated: it ends after {done} of {n_words} values")
        if after[last] > n_bits:
            raise ValueError(f"brush RLE is truncated: its last run needs {int(after[last]) - n_bits} more bits")
        starts, h, counts = starts[: last + 1], h[: last + 1], counts[: last + 1]

    size = np.array(field_bits)[h & 3]
    value_at = starts + 3 + size
    repeat = h >= 4
    if repeat.all():
        ends = np.minimum(decoded[: len(counts)], n_words) if n_words else counts
    else:
        # A literal chunk of n words is n runs of 1 word, its words one after another.
        n_values = np.where(repeat, 1, counts)
        first = np.cumsum(n_values) - n_values
        nth = np.arange(int(n_values.sum())) - np.repeat(first, n_values)
        value_at = np.repeat(value_at, n_values) + nth * word_bits
        run_lengths = np.repeat(np.where(repeat, counts, 1), n_values)
        ends = np.minimum(np.cumsum(run_lengths), n_words)

    if word_bits <= 25:  # the word lies in the 4 bytes from its first
        values = (windows[value_at >> 3] >> (32 - (value_at & 7) - word_bits)) & ((1 << word_bits) - 1)
    else:  # words are at most 32 bits and start at any bit of a byte: read 5 bytes around each
        b = value_at >> 3
        wide = padded.astype(np.int64)
        five = (wide[b] << 32) | (wide[b + 1] << 24) | (wide[b + 2] << 16) | (wide[b + 3] << 8) | wide[b + 4]
        values = (five >> (40 - (value_at & 7) - word_bits)) & ((1 << word_bits) - 1)

    # Pixel i is decided by word 4i + 3 (alpha); the run [s, e) of words holds it iff s // 4 <= i < e // 4.
    pixel_ends = ends // 4
    pixel_runs = np.diff(pixel_ends, prepend=0)
    return np.repeat(values > threshold, pixel_runs).reshape(height, width)
