"""Canonical Huffman coding of integer symbol streams, with a code table of one length per symbol.

Written here in numpy because no maintained Python package offers canonical Huffman with a table
that can be stored as code lengths and a vectorised decoder (`dahuffman` builds per-symbol Python
codecs with an end-of-file symbol and stores its table by pickling).

A code is described by `lengths[s]`, the bit length of symbol s's code (0: s does not occur).
Codes are assigned canonically (as DEFLATE does): by increasing length, then by symbol. A stream
with a single distinct symbol takes no bits at all: its table gives that symbol length 1 and the
decoder, told the number of symbols, repeats it.
"""

from __future__ import annotations

import heapq
import itertools

import numpy as np

MAX_CODE_LENGTH = 57  # codes are read through 64-bit windows; longer codes need > 2**38 symbols


def code_lengths(symbols: np.ndarray, alphabet_size: int) -> np.ndarray:
    """Huffman code lengths (uint8, one per symbol of the alphabet) for the stream `symbols`."""
    symbols = np.asarray(symbols)
    if symbols.size and (symbols.min() < 0 or symbols.max() >= alphabet_size):
        raise ValueError(f"symbols must lie in [0, {alphabet_size}), got [{symbols.min()}, {symbols.max()}]")
    counts = np.bincount(symbols.ravel().astype(np.int64), minlength=alphabet_size)
    lengths = np.zeros(alphabet_size, np.int64)
    present = np.flatnonzero(counts)
    if len(present) == 1:
        lengths[present] = 1
    if len(present) <= 1:
        return lengths.astype(np.uint8)
    tiebreak = itertools.count()
    heap = [(int(counts[s]), next(tiebreak), [int(s)]) for s in present]
    heapq.heapify(heap)
    while len(heap) > 1:
        count_a, _, members_a = heapq.heappop(heap)
        count_b, _, members_b = heapq.heappop(heap)
        lengths[members_a + members_b] += 1
        heapq.heappush(heap, (count_a + count_b, next(tiebreak), members_a + members_b))
    if lengths.max() > MAX_CODE_LENGTH:
        raise ValueError(f"a Huffman code is longer than {MAX_CODE_LENGTH} bits")
    return lengths.astype(np.uint8)


def _check_lengths(lengths: np.ndarray) -> None:
    """Raise ValueError unless `lengths` describes a prefix code (Kraft sum <= 1)."""
    used = lengths[lengths > 0].astype(np.int64)
    if used.size and used.max() > MAX_CODE_LENGTH:
        raise ValueError(f"code lengths must be at most {MAX_CODE_LENGTH}, got {used.max()}")
    if np.sum(np.ldexp(1.0, -used)) > 1.0:
        raise ValueError("code lengths do not form a prefix code (Kraft sum above 1)")


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """The canonical code (uint64, right-aligned in `lengths[s]` bits) of every symbol."""
    lengths = np.asarray(lengths, np.int64)
    _check_lengths(lengths)
    codes = np.zeros(len(lengths), np.uint64)
    code, previous = 0, 0
    for symbol in np.lexsort((np.arange(len(lengths)), lengths)):
        length = int(lengths[symbol])
        if length == 0:
            continue
        code <<= length - previous
        codes[symbol] = code
        code, previous = code + 1, length
    return codes


def _single_symbol(lengths: np.ndarray) -> int | None:
    used = np.flatnonzero(lengths)
    return int(used[0]) if len(used) == 1 else None


def encode(symbols: np.ndarray, lengths: np.ndarray) -> tuple[bytes, int]:
    """(packed bits, number of bits) of `symbols` under the code `lengths`, most significant bit first."""
    symbols = np.asarray(symbols, np.int64).ravel()
    lengths = np.asarray(lengths, np.int64)
    codes = canonical_codes(lengths)
    if symbols.size and np.any(lengths[symbols] == 0):
        raise ValueError("a symbol of the stream has no code")
    if _single_symbol(lengths) is not None:
        return b"", 0
    symbol_lengths = lengths[symbols]
    total = int(symbol_lengths.sum())
    owner = np.repeat(np.arange(symbols.size), symbol_lengths)
    offset = np.arange(total) - np.repeat(np.cumsum(symbol_lengths) - symbol_lengths, symbol_lengths)
    shift = (symbol_lengths[owner] - 1 - offset).astype(np.uint64)
    bits = (codes[symbols[owner]] >> shift) & np.uint64(1)
    return np.packbits(bits.astype(np.uint8)).tobytes(), total


def decode(data: bytes, num_bits: int, lengths: np.ndarray, count: int) -> np.ndarray:
    """The `count` symbols (int64) that `encode` wrote as `num_bits` bits of `data`.

    Raises ValueError when the bits do not decode to exactly `count` symbols under `lengths`.
    """
    lengths = np.asarray(lengths, np.int64)
    codes = canonical_codes(lengths)
    if len(data) != (num_bits + 7) // 8:
        raise ValueError(f"expected {(num_bits + 7) // 8} bytes for {num_bits} bits, got {len(data)}")
    single = _single_symbol(lengths)
    if single is not None or count == 0:
        if num_bits != 0 or (count and single is None):
            raise ValueError("the bit stream does not match its code table")
        return np.full(count, single if single is not None else 0, np.int64)
    longest = int(lengths.max())
    bits = np.unpackbits(np.frombuffer(data, np.uint8))[:num_bits].astype(np.uint64)
    padded = np.concatenate([bits, np.zeros(longest, np.uint64)])
    windows = np.zeros(num_bits, np.uint64)
    for j in range(longest):
        windows = (windows << np.uint64(1)) | padded[j : j + num_bits]
    symbol_at = np.full(num_bits, -1, np.int64)
    length_at = np.zeros(num_bits, np.int64)
    for length in np.unique(lengths[lengths > 0]):
        members = np.flatnonzero(lengths == length)  # canonical codes of one length are consecutive
        offset = (windows >> np.uint64(longest - length)) - codes[members[0]]
        hit = offset < np.uint64(len(members))  # wraps around (so misses) below the first code
        symbol_at[hit], length_at[hit] = members[offset[hit].astype(np.int64)], length
    return _walk(symbol_at.tolist(), length_at.tolist(), num_bits, count)


def _walk(symbol_at: list[int], length_at: list[int], num_bits: int, count: int) -> np.ndarray:
    """Follow the codes from bit 0: the symbol starting at each code boundary."""
    out, position = [], 0
    for _ in range(count):
        if position >= num_bits or symbol_at[position] < 0:
            raise ValueError("the bit stream ends early or holds a bit pattern that is no code")
        out.append(symbol_at[position])
        position += length_at[position]
    if position != num_bits:
        raise ValueError(f"the bit stream has {num_bits - position} bits after its {count} symbols")
    return np.asarray(out, np.int64)
