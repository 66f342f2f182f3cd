"""HEALPix partitioning with hats' vectorized pixel math.

Rows are placed by their ``_healpix_29`` spatial index. Under an existing partitioning every row inside current
coverage goes to the pixel that contains it (existing pixels never split between compactions); rows outside get
new pixels from hats' own alignment functions, computed from the histogram of those rows only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from hats.pixel_math import HealpixPixel
from hats.pixel_math import healpix_shim as hp
from hats.pixel_math.partition_stats import generate_alignment, generate_incremental_alignment
from hats.pixel_math.spatial_index import spatial_index_to_healpix
from hats.pixel_tree.pixel_tree import PixelTree


def sorted_pixels(pixels: Sequence[HealpixPixel]) -> list[HealpixPixel]:
    """Pixels in spatial (depth-29 range) order."""
    return PixelTree.from_healpix(list(pixels)).get_healpix_pixels()


def locate(healpix29: np.ndarray, pixels: Sequence[HealpixPixel]) -> np.ndarray:
    """Index into ``sorted_pixels(pixels)`` of the pixel containing each row, ``-1`` outside coverage."""
    if len(pixels) == 0:
        return np.full(len(healpix29), -1, dtype=np.int64)
    ranges = PixelTree.from_healpix(list(pixels)).to_depth29_ranges()
    slot = np.searchsorted(ranges[:, 0], healpix29, side="right") - 1
    inside = (slot >= 0) & (healpix29 < ranges[np.clip(slot, 0, None), 1])
    return np.where(inside, slot, -1)


def histogram(healpix29: np.ndarray, order: int) -> np.ndarray:
    """Dense row-count histogram at ``order`` (the catalog's skymap/mapping order)."""
    cells = spatial_index_to_healpix(healpix29, target_order=order)
    return np.bincount(cells, minlength=hp.order2npix(order)).astype(np.int64)


def _alignment_pixels(alignment: np.ndarray, used_cells: np.ndarray) -> list[HealpixPixel]:
    return sorted_pixels({HealpixPixel(int(alignment[cell][0]), int(alignment[cell][1])) for cell in used_cells})


def new_pixels(
    healpix29: np.ndarray,
    existing: Sequence[HealpixPixel],
    *,
    order: int,
    threshold: int,
    lowest_order: int = 0,
) -> list[HealpixPixel]:
    """Pixels (spatially sorted) for rows outside ``existing`` coverage, never overlapping it, each with at most
    ``threshold`` rows.

    Only the rows' own histogram is aligned; with no existing pixel this is hats' standard alignment, otherwise
    hats' incremental alignment (the costly one, so callers pass only the uncovered rows and skip the call when
    there are none).
    """
    if len(healpix29) == 0:
        return []
    counts = histogram(healpix29, order)
    used = np.flatnonzero(counts)
    if existing:
        alignment = generate_incremental_alignment(
            counts, [(p.order, p.pixel) for p in existing], highest_order=order, lowest_order=lowest_order,
            threshold=threshold,
        )
    else:
        alignment = generate_alignment(counts, highest_order=order, lowest_order=lowest_order, threshold=threshold)
    return _alignment_pixels(alignment, used)


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
