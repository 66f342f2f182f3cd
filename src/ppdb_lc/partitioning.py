"""HEALPix partitioning with hats' vectorized pixel math.

Rows are placed by their ``_healpix_29`` spatial index. Under an existing partitioning every row inside current
coverage goes to the pixel that contains it (existing pixels never split between compactions); rows outside get
new pixels from hats' own alignment functions, computed from the histogram of those rows only.

A dense field can put more than ``threshold`` rows into one cell at the highest order, which hats' alignment
rejects. Such a cell becomes an *oversize leaf pixel* at the highest order (going deeper is the only way to split
it) and everything else is partitioned with the configured threshold exactly as hats would (:func:`new_pixels`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from hats.pixel_math import HealpixPixel
from hats.pixel_math import healpix_shim as hp
from hats.pixel_math.partition_stats import generate_alignment, generate_incremental_alignment
from hats.pixel_math.spatial_index import spatial_index_to_healpix
from hats.pixel_tree.pixel_tree import PixelTree

log = logging.getLogger(__name__)


def sorted_pixels(pixels: Sequence[HealpixPixel]) -> list[HealpixPixel]:
    """Pixels in spatial (depth-29 range) order."""
    return PixelTree.from_healpix(list(pixels)).get_healpix_pixels()


def depth29_ranges(pixels: Sequence[HealpixPixel]) -> np.ndarray:
    """``[low, high)`` ``_healpix_29`` range of each pixel (n x 2 int64), in ``sorted_pixels`` order (hats' tree)."""
    if len(pixels) == 0:
        return np.empty((0, 2), dtype=np.int64)
    return np.asarray(PixelTree.from_healpix(list(pixels)).to_depth29_ranges(), dtype=np.int64)


def locate(healpix29: np.ndarray, pixels: Sequence[HealpixPixel]) -> np.ndarray:
    """Index into ``sorted_pixels(pixels)`` of the pixel containing each row, ``-1`` outside coverage."""
    if len(pixels) == 0:
        return np.full(len(healpix29), -1, dtype=np.int64)
    ranges = depth29_ranges(pixels)
    slot = np.searchsorted(ranges[:, 0], healpix29, side="right") - 1
    inside = (slot >= 0) & (healpix29 < ranges[np.clip(slot, 0, None), 1])
    return np.where(inside, slot, -1)


def histogram(healpix29: np.ndarray, order: int) -> np.ndarray:
    """Dense row-count histogram at ``order`` (the catalog's skymap/mapping order)."""
    cells = spatial_index_to_healpix(healpix29, target_order=order)
    return np.bincount(cells, minlength=hp.order2npix(order)).astype(np.int64)


def _alignment_pixels(alignment: np.ndarray, used_cells: np.ndarray) -> list[HealpixPixel]:
    return sorted_pixels({HealpixPixel(int(alignment[cell][0]), int(alignment[cell][1])) for cell in used_cells})


def _warn_oversize(counts: np.ndarray, oversize: np.ndarray, *, order: int, threshold: int) -> None:
    shown = ", ".join(f"{order}/{int(cell)} ({int(counts[cell])} rows)" for cell in oversize[:10])
    more = f" and {len(oversize) - 10} more" if len(oversize) > 10 else ""
    log.warning(
        "%d pixel(s) at the highest order hold more rows than catalog.pixel_threshold %d and are kept as oversize "
        "leaf pixels (order/pixel): %s%s; raise catalog.highest_healpix_order or catalog.pixel_threshold to split "
        "them", len(oversize), threshold, shown, more,
    )


def new_pixels(
    healpix29: np.ndarray,
    existing: Sequence[HealpixPixel],
    *,
    order: int,
    threshold: int,
    lowest_order: int = 0,
) -> list[HealpixPixel]:
    """Pixels (spatially sorted) for rows outside ``existing`` coverage, never overlapping it, each with at most
    ``threshold`` rows, except oversize leaf pixels (below).

    Only the rows' own histogram is aligned; with no existing pixel this is hats' standard alignment, otherwise
    hats' incremental alignment (the costly one, so callers pass only the uncovered rows and skip the call when
    there are none).

    A cell at ``order`` holding more than ``threshold`` rows cannot be split without a higher order, and hats
    rejects it. Its count is capped at ``threshold`` for the alignment: any larger pixel holding it together with
    other rows then still exceeds the threshold (as with the true count), so every other row is placed exactly as
    hats would place it, and the cell's own pixel holds no other row; that pixel becomes the cell itself (hats'
    standard alignment may have chosen a larger pixel holding only that cell). One WARNING names such cells.
    Without oversize cells the result is exactly hats' alignment.
    """
    if len(healpix29) == 0:
        return []
    return pixels_for_histogram(histogram(healpix29, order), existing, order=order, threshold=threshold,
                                lowest_order=lowest_order)


def pixels_for_histogram(
    counts: np.ndarray,
    existing: Sequence[HealpixPixel],
    *,
    order: int,
    threshold: int,
    lowest_order: int = 0,
) -> list[HealpixPixel]:
    """:func:`new_pixels` from a dense count histogram at ``order`` instead of the rows (the weekly plan has the
    histogram, not the rows, of the pixels it does not rewrite)."""
    used = np.flatnonzero(counts)
    if not len(used):
        return []
    oversize = used[counts[used] > threshold]
    aligned = np.minimum(counts, threshold) if len(oversize) else counts
    if existing:
        alignment = generate_incremental_alignment(
            aligned, [(p.order, p.pixel) for p in existing], highest_order=order, lowest_order=lowest_order,
            threshold=threshold,
        )
    else:
        alignment = generate_alignment(aligned, highest_order=order, lowest_order=lowest_order, threshold=threshold)
    if not len(oversize):
        return _alignment_pixels(alignment, used)
    _warn_oversize(counts, oversize, order=order, threshold=threshold)
    regular = _alignment_pixels(alignment, used[counts[used] <= threshold])
    return sorted_pixels([*regular, *(HealpixPixel(order, int(cell)) for cell in oversize)])


def partition(
    healpix29: np.ndarray,
    existing: Sequence[HealpixPixel],
    *,
    order: int,
    threshold: int,
) -> tuple[list[HealpixPixel], np.ndarray, list[HealpixPixel]]:
    """Place rows under ``existing`` pixels, creating new pixels only outside coverage.

    Returns ``(pixels, slot, created)``: all pixels (existing + created, spatially sorted), each row's index into
    ``pixels``, and the pixels created for uncovered rows.
    """
    slot = locate(healpix29, existing)
    outside = slot < 0
    created = new_pixels(healpix29[outside], existing, order=order, threshold=threshold) if outside.any() else []
    pixels = sorted_pixels([*existing, *created]) if created else sorted_pixels(existing)
    if created or not existing:
        slot = locate(healpix29, pixels)
    if (slot < 0).any():
        raise RuntimeError(f"{int((slot < 0).sum())} rows fall outside every pixel after alignment")
    return pixels, slot, created
