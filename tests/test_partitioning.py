"""Partitioning: hats' alignment unchanged on ordinary fields; dense cells above the threshold become oversize leaves."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from hats.pixel_math import HealpixPixel
from hats.pixel_math.partition_stats import generate_alignment, generate_incremental_alignment
from hats.pixel_tree.pixel_tree import PixelTree

from ppdb_lc import partitioning

ORDER = 8
THRESHOLD = 250
CELLS_PER_BASE = 4**ORDER
DENSE = 4 * CELLS_PER_BASE + 1000  # an order-8 cell in base pixel 4
SIBLING = DENSE ^ 1  # same order-7 parent
FAR_BASE = 9


def rows_in(cells, per_cell: int, rng) -> np.ndarray:
    """``per_cell`` random ``_healpix_29`` values inside each order-8 cell."""
    cells = np.repeat(np.asarray(cells, dtype=np.int64), per_cell)
    return (cells << (2 * (29 - ORDER))) + rng.integers(0, 4 ** (29 - ORDER), len(cells))


def dense_field(rng) -> np.ndarray:
    """300 rows in one order-8 cell, 40 in its sibling, 100 spread over base pixel 9 (nothing else there)."""
    far = FAR_BASE * CELLS_PER_BASE + rng.choice(CELLS_PER_BASE, 100, replace=False)
    hp29 = np.concatenate([rows_in([DENSE], 300, rng), rows_in([SIBLING], 40, rng), rows_in(far, 1, rng)])
    return rng.permutation(hp29)


def oversize_warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "ppdb_lc.partitioning"]


def assert_valid(hp29: np.ndarray, pixels: list[HealpixPixel], slot: np.ndarray, oversize: set[HealpixPixel]):
    """Every row placed, pixels disjoint, at most THRESHOLD rows per pixel except the oversize ones."""
    assert (slot >= 0).all()
    ranges = PixelTree.from_healpix(pixels).to_depth29_ranges()
    assert (ranges[1:, 0] >= ranges[:-1, 1]).all()  # sorted and non-overlapping
    counts = np.bincount(slot, minlength=len(pixels))
    for pixel, count in zip(pixels, counts, strict=True):
        if pixel in oversize:
            assert pixel.order == ORDER and count > THRESHOLD
        else:
            assert count <= THRESHOLD


def test_dense_cell_becomes_oversize_leaf_in_bootstrap(caplog):
    hp29 = dense_field(np.random.default_rng(1))
    with caplog.at_level(logging.WARNING, logger="ppdb_lc.partitioning"):
        pixels = partitioning.new_pixels(hp29, [], order=ORDER, threshold=THRESHOLD)
    # The sibling shares every ancestor with the dense cell, so it stays at order 8 too; base pixel 9 fits whole.
    assert pixels == [HealpixPixel(8, DENSE), HealpixPixel(8, SIBLING), HealpixPixel(0, FAR_BASE)]
    slot = partitioning.locate(hp29, pixels)
    assert np.bincount(slot).tolist() == [300, 40, 100]
    assert_valid(hp29, pixels, slot, {HealpixPixel(8, DENSE)})
    [record] = oversize_warnings(caplog)
    message = record.getMessage()
    assert f"8/{DENSE} (300 rows)" in message and "catalog.pixel_threshold 250" in message
    assert "catalog.highest_healpix_order" in message


def test_isolated_dense_cell_stays_at_highest_order(caplog):
    """Alone in its base pixel, hats' standard alignment would pick order 0; the leaf is the cell itself."""
    hp29 = rows_in([DENSE], 300, np.random.default_rng(2))
    with caplog.at_level(logging.WARNING, logger="ppdb_lc.partitioning"):
        assert partitioning.new_pixels(hp29, [], order=ORDER, threshold=THRESHOLD) == [HealpixPixel(8, DENSE)]
    assert len(oversize_warnings(caplog)) == 1


def test_dense_cell_in_nightly_partition_with_existing_pixels(caplog):
    rng = np.random.default_rng(3)
    existing = [HealpixPixel(0, FAR_BASE), HealpixPixel(1, 4 * 4 + 3)]  # base 9, and a quarter of base 4 (no rows)
    hp29 = dense_field(rng)
    with caplog.at_level(logging.WARNING, logger="ppdb_lc.partitioning"):
        pixels, slot, created = partitioning.partition(hp29, existing, order=ORDER, threshold=THRESHOLD)
    assert created == [HealpixPixel(8, DENSE), HealpixPixel(8, SIBLING)]
    assert pixels == [HealpixPixel(8, DENSE), HealpixPixel(8, SIBLING), HealpixPixel(1, 19), HealpixPixel(0, 9)]
    assert np.bincount(slot, minlength=len(pixels)).tolist() == [300, 40, 0, 100]
    np.testing.assert_array_equal(slot, partitioning.locate(hp29, pixels))
    assert_valid(hp29, pixels, slot, {HealpixPixel(8, DENSE)})
    [record] = oversize_warnings(caplog)
    assert f"8/{DENSE} (300 rows)" in record.getMessage()


def test_many_dense_cells_among_ordinary_ones(caplog):
    """A dense field: clumps above and below the threshold, in one region; one warning lists every oversize cell."""
    rng = np.random.default_rng(4)
    start = 4 * CELLS_PER_BASE + 4096
    dense = start + np.array([0, 5, 17, 18, 300])
    ordinary = start + rng.choice(np.arange(1, 1024), 150, replace=False)
    ordinary = ordinary[~np.isin(ordinary, dense)]
    hp29 = np.concatenate([rows_in(dense, 260, rng), rows_in(ordinary, 30, rng)])
    with caplog.at_level(logging.WARNING, logger="ppdb_lc.partitioning"):
        pixels, slot, created = partitioning.partition(hp29, [], order=ORDER, threshold=THRESHOLD)
    assert created == pixels
    assert {HealpixPixel(8, int(c)) for c in dense} <= set(pixels)
    assert_valid(hp29, pixels, slot, {HealpixPixel(8, int(c)) for c in dense})
    [record] = oversize_warnings(caplog)
    assert record.getMessage().startswith("5 pixel(s)")
    assert all(f"8/{c} (260 rows)" in record.getMessage() for c in dense)


@pytest.mark.parametrize("with_existing", [False, True])
def test_no_oversize_cell_gives_hats_alignment(caplog, with_existing):
    rng = np.random.default_rng(5)
    clumps = 4 * CELLS_PER_BASE + rng.choice(CELLS_PER_BASE, 40, replace=False)
    hp29 = np.concatenate([rows_in(clumps, 50, rng), rows_in(clumps[:3], 200, rng),  # up to exactly 250 per cell
                           rows_in(FAR_BASE * CELLS_PER_BASE + np.arange(600), 1, rng)])
    existing = [HealpixPixel(1, 4 * 4 + 2)] if with_existing else []
    if with_existing:
        hp29 = hp29[partitioning.locate(hp29, existing) < 0]  # as partition() passes only uncovered rows
    counts = partitioning.histogram(hp29, ORDER)
    assert counts.max() == THRESHOLD
    with caplog.at_level(logging.WARNING, logger="ppdb_lc.partitioning"):
        pixels = partitioning.new_pixels(hp29, existing, order=ORDER, threshold=THRESHOLD)
    if with_existing:
        alignment = generate_incremental_alignment(counts, [(1, 18)], highest_order=ORDER, threshold=THRESHOLD)
    else:
        alignment = generate_alignment(counts, highest_order=ORDER, threshold=THRESHOLD)
    expected = {HealpixPixel(int(alignment[c][0]), int(alignment[c][1])) for c in np.flatnonzero(counts)}
    assert pixels == partitioning.sorted_pixels(expected)
    assert len(pixels) > 3
    assert not oversize_warnings(caplog)
