"""Canonical Huffman coding and relative sparse indices: decode(encode(x)) == x, and bad streams refused."""

import numpy as np
import pytest

from flax_squeezenet.weights import huffman, sparse


def round_trip(symbols: np.ndarray, alphabet_size: int) -> tuple[np.ndarray, int]:
    lengths = huffman.code_lengths(symbols, alphabet_size)
    data, num_bits = huffman.encode(symbols, lengths)
    return huffman.decode(data, num_bits, lengths, len(symbols)), num_bits


@pytest.mark.parametrize(
    "symbols",
    [
        np.random.default_rng(0).integers(0, 256, 20_000),
        np.random.default_rng(1).geometric(0.4, 20_000).clip(0, 255) - 1,
        np.full(1000, 7),  # one symbol
        np.arange(256),  # all distinct
        np.array([], np.int64),  # empty layer
        np.array([255]),
        np.repeat(np.arange(24), [2**min(i, 12) for i in range(24)]),  # exponential counts: long codes
    ],
    ids=["uniform", "geometric", "one-symbol", "all-distinct", "empty", "single-entry", "exponential"],
)
def test_decode_inverts_encode(symbols):
    decoded, _ = round_trip(symbols, 256)
    np.testing.assert_array_equal(decoded, symbols)


def test_one_symbol_takes_no_bits_and_skewed_codes_beat_fixed_width():
    assert round_trip(np.full(1000, 3), 16)[1] == 0
    symbols = np.random.default_rng(2).geometric(0.5, 10_000) - 1
    symbols = symbols.clip(0, 15)
    _, num_bits = round_trip(symbols, 16)
    counts = np.bincount(symbols, minlength=16)
    probabilities = counts[counts > 0] / counts.sum()
    entropy = -np.sum(probabilities * np.log2(probabilities)) * len(symbols)
    assert entropy <= num_bits < entropy + len(symbols)  # Huffman: within one bit per symbol of the entropy


def test_canonical_codes_are_prefix_free():
    lengths = huffman.code_lengths(np.random.default_rng(3).geometric(0.3, 5000).clip(0, 63), 64)
    codes = huffman.canonical_codes(lengths)
    words = [format(int(codes[s]), f"0{lengths[s]}b") for s in np.flatnonzero(lengths)]
    assert not any(a != b and b.startswith(a) for a in words for b in words)


def test_corrupted_streams_are_refused():
    symbols = np.random.default_rng(4).integers(0, 5, 100)
    lengths = huffman.code_lengths(symbols, 8)
    data, num_bits = huffman.encode(symbols, lengths)
    with pytest.raises(ValueError, match="ends early|no code"):
        huffman.decode(data, num_bits, lengths, len(symbols) + 5)
    with pytest.raises(ValueError, match="bits after"):
        huffman.decode(data, num_bits, lengths, len(symbols) - 5)
    with pytest.raises(ValueError, match="Kraft"):
        huffman.decode(data, num_bits, np.array([1, 1, 1, 0, 0, 0, 0, 0]), len(symbols))
    with pytest.raises(ValueError, match="bytes"):
        huffman.decode(data[:-1], num_bits, lengths, len(symbols))


@pytest.mark.parametrize("gap", [0, 1, 15, 16, 17, 31, 32, 100])
def test_relative_positions_bridge_long_gaps_with_fillers(gap):
    positions = np.array([3, 3 + gap + 1, 3 + 2 * (gap + 1) + 40])
    gaps, is_filler = sparse.encode_positions(positions)
    assert gaps.max() <= sparse.MAX_GAP
    stored = sparse.decode_positions(gaps, positions[-1] + 1)
    np.testing.assert_array_equal(stored[~is_filler], positions)
    assert is_filler.sum() == sum(g // 16 for g in (3, gap, gap + 40))


def test_positions_past_the_kernel_are_refused():
    with pytest.raises(ValueError, match="past the end"):
        sparse.decode_positions(np.array([15, 15]), 20)
