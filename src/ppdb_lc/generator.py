"""Deterministic demo PPDB export generator.

Writes a directory tree shaped like the Rubin PPDB parquet export (``ppdb_format.md`` §1) filled with data that
follows the semantics an incremental ingest must handle (§3). No wall-clock time is used: one :class:`DemoSpec`
always produces byte-identical files.

Model
-----
* **Objects.** ``n_objects`` variables placed uniformly in a disk of ``field_radius`` deg around
  (``ra_center``, ``dec_center``). Each has a true position, a template flux per band (log-uniform 10 nJy to
  30 µJy, so faint objects scatter to negative measured fluxes), a sinusoidal lightcurve and a per-visit
  detection probability. It *appears* on a random night, so later nights mix new and known objects, and from then
  on is *active* (detectable) on a random 20-80 % of the nights; inactive known objects still get forced
  photometry. ``drift_fraction`` of the objects (always active) sit within 0.3 arcsec of an order-6 HEALPix pixel
  boundary less than 1 deg from the field centre and are measured with 0.5 arcsec noise, so their mean position
  moves across the boundary from one version to the next.
* **Time.** Night ``D`` (Rubin dayobs) has ``chunks_per_night`` replica chunks: 600 s windows starting at
  D 23:40 UTC, spaced evenly until about 10:00 UTC of D+1. The first chunk's date folder is therefore D and the
  later ones D+1. A chunk holds ``visits_per_chunk`` visits. A visit is stored (the ``store()`` time, which is
  ``validityStartMjdTai`` and ``timeProcessedMjdTai``) 60 s after its midpoint, and the chunk is the 600 s window
  of that store time; the chunk's last store is at ``chunk_id + 590 s`` (its ``last_update_time``). TAI-UTC is
  ignored: MJD TAI = Unix seconds / 86400 + 40587.
* **Visits.** One band each, a pointing inside the field and a toy LSSTCam focal plane: a 15 x 15 grid of
  4000 x 4000 detectors of 0.2 arcsec pixels without the four 3 x 3 corner blocks, i.e. 189 detectors.
* **One visit** (``diaPipe`` in miniature). Objects in the footprint are detected with their probability. Each
  detection is a DiaSource *and* a new DiaObject version (running mean position of all sources so far, running
  counts and per-band flux statistics); diaObjectId = the diaSourceId of the object's first source.
  Solar-system detections (diaObjectId null, ssObjectId set) add ``solar_system_fraction`` of all sources and
  create no DiaObject. Every object in the footprint with at least 2 detections gets a DiaForcedSource at its
  current mean position, whether or not it was detected in that visit, so many forced sources have no DiaObject
  row that night.
* **Special chunks.** Forced photometry is off in the run's first chunk, which therefore has DiaObject and
  DiaSource files but no DiaForcedSource file. The last chunk of the second night (of the only night, for a
  one-night run) stores nothing: it holds only a manifest.
* **Formats.** Nights before ``flat_layout_from`` use ``ROOT/YYYY/MM/DD/<chunk_id>/`` with the old manifest:
  ``chunk_<id>.manifest.json`` on the first night, then ``manifest.json`` with ``update_count`` (the 2026-04 ->
  2026-06 variant). Later nights use ``ROOT/<chunk_id>/manifest.json`` in the new format, with ``files`` entries
  carrying a checksum and size and, as in dax_ppdb HEAD (whose ``Manifest`` forbids extra fields), no
  ``update_count``. Nights from ``schema_10_from`` on are written with APDB schema 10.0.0, the
  others with 9.1.1.

Changes (``changes=True``), as the real export carries them since 2026-03 (``shared/docs/update_records.md``)
----------------------------------------------------------------------------------------------------------
* **Twins.** ``twin_fraction`` of the objects have a duplicate ~0.8 arcsec away (some straddle an order-6 pixel
  boundary), detected as a separate DiaObject. A **dedup run** keeps the older object of each detected pair,
  reassigns the other's DiaSources to it, sets its ``nDiaSources`` and closes the other's validity
  (``reassign_diasource_to_diaobject`` + ``update_n_dia_sources`` + ``close_diaobject_validity``). The closed
  object is never detected or measured again. One run sits in a daytime chunk holding only ``updates.parquet``
  (before the second night), one inside the last data chunk of the third night.
* **Other records**, in the second chunk of every night after the first: withdrawals of DiaSources from earlier
  nights and from the same chunk, a forced-source withdrawal, a reassignment to an SSObject, a source reassigned
  twice (the later record wins) and an ``nDiaSources`` pair whose older record comes last (it loses).
* **Re-emitted rows** in the same chunk: copies (same id, coordinates moved by ~0.05 arcsec, one under another
  diaObjectId) of DiaSources from the previous night and from the night's first chunk, and of a forced source.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import sys
import uuid
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hats.pixel_math.healpix_shim import radec2pix

from ppdb_lc import apdb

BANDS: Final = "ugrizy"
_BAND_WEIGHTS: Final = np.array([0.08, 0.22, 0.22, 0.22, 0.13, 0.13])

# Time layout (seconds).
CHUNK_SECONDS: Final = 600
MAX_CHUNKS_PER_NIGHT: Final = 74  # 600 s windows from 23:40 UTC to 12:00 UTC, where the next dayobs starts
_NIGHT_START: Final = 23 * 3600 + 40 * 60  # first chunk of dayobs D starts at D 23:40 UTC
_DAYTIME_UPDATES: Final = 16 * 3600  # the daytime dedup chunk of dayobs D starts at D 16:00 UTC
_OBSERVING_WINDOWS: Final = 62  # 600 s windows from 23:40 UTC to 10:00 UTC, over which chunks are spread
_LAST_STORE: Final = 590  # offset of a chunk's last store() from its start: its last_update_time
_FIRST_STORE_MIN: Final = 10  # earliest offset of a store() in its chunk
_STORE_DELAY: Final = 60.0  # visit midpoint -> store()
_EXPORT_DELAY: Final = 3600  # last_update_time -> exported_at
_MJD_UNIX_EPOCH: Final = 40587.0
_EXPOSURE_TIME: Final = 30.0

# Toy focal plane.
_GRID: Final = 15
_CORNER: Final = 3
_DETECTOR_PIXELS: Final = 4000
_PIXEL_SCALE: Final = 0.2  # arcsec / pixel
_CELL_DEG: Final = _DETECTOR_PIXELS * _PIXEL_SCALE / 3600

# Measurement model.
_POSITION_SIGMA: Final = 0.1  # arcsec
_DRIFT_POSITION_SIGMA: Final = 0.5  # arcsec
_DRIFT_OFFSET: Final = 0.3  # arcsec, max distance of a drifting object from its pixel boundary
_DRIFT_ORDER: Final = 6
_DRIFT_DETECT_PROBABILITY: Final = 0.9
_DUTY_CYCLE: Final = (0.2, 0.8)  # range of the per-object probability of being active (detectable) on a night
_FLUX_FLOOR: Final = 60.0  # nJy, sky noise of a science-image flux
_FLUX_FRACTION: Final = 0.03  # relative flux error of bright sources
_TEMPLATE_NOISE: Final = 30.0  # nJy, added in quadrature for difference-image fluxes
_HISTORY_THRESHOLD: Final = 2  # detections an object needs before it gets forced photometry
_FLAG_RATE: Final = 0.005  # probability of each generic DiaSource flag being set
_PARENT_RATE: Final = 0.01  # fraction of DiaSources with a deblend parent
_RELIABILITY_VERSION: Final = "v0.3.1"
_SOURCE_ID_START: Final = 170_000_000_000_000_000
_FORCED_ID_START: Final = 180_000_000_000_000_000
_ARCSEC: Final = 1 / 3600
_TWIN_SEPARATION: Final = 0.8  # arcsec

#: Statistics each DiaObject flux kind exports, as ``<band>_<kind>Flux<stat>``.
_OBJECT_FLUX_STATS: Final[dict[str, tuple[str, ...]]] = {
    "psf": ("Mean", "MeanErr", "Sigma", "Ndata", "Min", "Max", "MaxSlope", "ErrMean"),
    "science": ("Mean", "MeanErr"),
    "fp": ("Mean", "MeanErr"),
}

Columns = dict[str, np.ndarray]


@dataclass(frozen=True)
class DemoSpec:
    """What to generate. The defaults give a small run: 3000 objects over 4 nights, both layouts and schemas."""

    n_objects: int = 3000  # distinct DiaObjects over the whole run
    nights: tuple[str, ...] = ("2026-11-20", "2026-11-21", "2026-11-22", "2026-11-23")  # dayobs, increasing
    chunks_per_night: int = 4  # 600 s replica chunks per night, spread through the night
    visits_per_chunk: int = 3
    seed: int = 42
    ra_center: float = 150.0  # deg; the field disk spans several HEALPix order 3-6 pixels
    dec_center: float = 2.0
    field_radius: float = 3.0  # deg
    flat_layout_from: int = 2  # nights with index >= this use ROOT/<chunk_id>/ and the new manifest
    schema_10_from: int = 3  # nights with index >= this use APDB schema 10.0.0, earlier ones 9.1.1
    solar_system_fraction: float = 0.05  # of DiaSources: diaObjectId null, ssObjectId set
    drift_fraction: float = 0.02  # of objects: on an order-6 pixel boundary, noisy positions
    twin_fraction: float = 0.02  # of objects: a duplicate DiaObject ~0.8 arcsec away, merged by a dedup run
    changes: bool = True  # emit update records and re-emitted DiaSources (see "Changes" above)

    def __post_init__(self) -> None:
        dates = [dt.date.fromisoformat(night) for night in self.nights]
        if not dates or dates != sorted(set(dates)):
            raise ValueError("nights must be a non-empty, strictly increasing sequence of YYYY-MM-DD dates")
        if self.n_objects < 1 or self.visits_per_chunk < 1:
            raise ValueError("n_objects and visits_per_chunk must be positive")
        if not 1 <= self.chunks_per_night <= MAX_CHUNKS_PER_NIGHT:
            raise ValueError(f"chunks_per_night must be between 1 and {MAX_CHUNKS_PER_NIGHT}")
        if len(self.nights) * self.chunks_per_night < 2:
            raise ValueError("need at least 2 chunks (one of them is left empty)")
        if not (0 <= self.solar_system_fraction < 1 and 0 <= self.drift_fraction <= 1):
            raise ValueError("solar_system_fraction must be in [0, 1) and drift_fraction in [0, 1]")
        if not 0 <= self.twin_fraction <= 0.25:
            raise ValueError("twin_fraction must be in [0, 0.25]")
        if self.field_radius <= 0:
            raise ValueError("field_radius must be positive")


@dataclass(frozen=True)
class ChunkInfo:
    """One written chunk directory."""

    chunk_id: int
    night: str
    path: Path
    rows: dict[str, int]


@dataclass(frozen=True)
class _ChunkPlan:
    chunk_id: int
    night_index: int
    night: str
    index_in_night: int
    store_times: tuple[float, ...]  # Unix seconds of the visits' store() calls; empty for an empty chunk
    forced_photometry: bool
    dedup: bool = False  # a dedup run's records go into this chunk
    records: bool = False  # withdrawals, SSObject and LWW records, re-emitted rows go into this chunk

    @property
    def last_update_time(self) -> float:
        return float(self.chunk_id + _LAST_STORE)


@dataclass(frozen=True)
class _Visit:
    visit_id: int
    band: int
    midpoint_mjd: float
    store_mjd: float
    ra: float  # pointing centre, deg
    dec: float
    psf_moment: float  # PSF second moment ixxPSF = iyyPSF, arcsec^2


@dataclass(frozen=True)
class _Objects:
    """Static truth of every object."""

    ra: np.ndarray
    dec: np.ndarray
    template: np.ndarray  # (n, bands) template flux, nJy
    amplitude: np.ndarray  # relative lightcurve amplitude, < 1
    period: np.ndarray  # days
    phase: np.ndarray
    p_detect: np.ndarray  # detection probability per visit in the footprint on an active night
    position_sigma: np.ndarray  # arcsec, per-coordinate noise of a source position
    active: np.ndarray  # (n, nights) bool: detectable that night (appeared and in an active phase)
    twin_of: np.ndarray  # index of the object a twin duplicates, -1 for others

    def true_flux(self, idx: np.ndarray, band: int, mjd: float) -> np.ndarray:
        """Lightcurve value (nJy) of objects ``idx`` in ``band`` at ``mjd``."""
        wave = np.sin(2 * np.pi * mjd / self.period[idx] + self.phase[idx])
        return self.template[idx, band] * (1 + self.amplitude[idx] * wave)


class _FluxStats:
    """Running per-object, per-band statistics of one kind of flux measurement."""

    def __init__(self, n_objects: int) -> None:
        shape = (n_objects, len(BANDS))
        self.ndata = np.zeros(shape, np.int32)
        self.sum_w = np.zeros(shape)
        self.sum_wf = np.zeros(shape)
        self.sum_f = np.zeros(shape)
        self.sum_f2 = np.zeros(shape)
        self.sum_err = np.zeros(shape)
        self.min = np.full(shape, np.inf)
        self.max = np.full(shape, -np.inf)
        self.max_slope = np.full(shape, np.nan)
        self.last_flux = np.full(shape, np.nan)
        self.last_mjd = np.full(shape, np.nan)

    def add(self, idx: np.ndarray, band: int, flux: np.ndarray, err: np.ndarray, mjd: float) -> None:
        """Record one measurement for each of the (distinct) objects ``idx``."""
        weight = 1 / err**2
        self.ndata[idx, band] += 1
        self.sum_w[idx, band] += weight
        self.sum_wf[idx, band] += weight * flux
        self.sum_f[idx, band] += flux
        self.sum_f2[idx, band] += flux**2
        self.sum_err[idx, band] += err
        self.min[idx, band] = np.minimum(self.min[idx, band], flux)
        self.max[idx, band] = np.maximum(self.max[idx, band], flux)
        slope = (flux - self.last_flux[idx, band]) / (mjd - self.last_mjd[idx, band])
        self.max_slope[idx, band] = np.fmax(self.max_slope[idx, band], slope)
        self.last_flux[idx, band] = flux
        self.last_mjd[idx, band] = mjd

    def summary(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """(len(idx), bands) arrays per statistic; NaN (null) where a band has too few measurements."""
        n = self.ndata[idx]
        with np.errstate(divide="ignore", invalid="ignore"):
            some = n > 0
            variance = (self.sum_f2[idx] - self.sum_f[idx] ** 2 / n) / (n - 1)
            return {
                "Mean": np.where(some, self.sum_wf[idx] / self.sum_w[idx], np.nan),
                "MeanErr": np.where(some, 1 / np.sqrt(self.sum_w[idx]), np.nan),
                "Sigma": np.where(n > 1, np.sqrt(np.maximum(variance, 0)), np.nan),
                "Ndata": n,
                "Min": np.where(some, self.min[idx], np.nan),
                "Max": np.where(some, self.max[idx], np.nan),
                "MaxSlope": self.max_slope[idx],
                "ErrMean": np.where(some, self.sum_err[idx] / n, np.nan),
            }


class _History:
    """What the APDB knows about each object: its id and the running aggregates of its versions."""

    def __init__(self, objects: _Objects) -> None:
        n = len(objects.ra)
        self.objects = objects
        self.dia_object_id = np.zeros(n, np.int64)  # 0 until the first detection
        self.n_sources = np.zeros(n, np.int32)
        # Source offsets from the true position (arcsec) keep the running mean exact.
        self.sum_dx = np.zeros(n)
        self.sum_dy = np.zeros(n)
        self.sum_dxdy = np.zeros(n)
        self.first_mjd = np.full(n, np.nan)
        self.last_mjd = np.full(n, np.nan)
        self.psf = _FluxStats(n)
        self.science = _FluxStats(n)
        self.forced = _FluxStats(n)

    def assign_ids(self, idx: np.ndarray, source_ids: np.ndarray) -> np.ndarray:
        """diaObjectIds of objects ``idx``; objects seen for the first time take their new source's id."""
        new = self.dia_object_id[idx] == 0
        self.dia_object_id[idx[new]] = source_ids[new]
        return self.dia_object_id[idx]

    def record(self, idx: np.ndarray, found: Columns, visit: _Visit) -> None:
        """Fold this visit's detections of objects ``idx`` into their aggregates."""
        dx = (found["ra"] - self.objects.ra[idx]) * np.cos(np.radians(self.objects.dec[idx])) / _ARCSEC
        dy = (found["dec"] - self.objects.dec[idx]) / _ARCSEC
        self.n_sources[idx] += 1
        self.sum_dx[idx] += dx
        self.sum_dy[idx] += dy
        self.sum_dxdy[idx] += dx * dy
        self.first_mjd[idx] = np.fmin(self.first_mjd[idx], visit.midpoint_mjd)
        self.last_mjd[idx] = visit.midpoint_mjd
        self.psf.add(idx, visit.band, found["psf"], found["psf_err"], visit.midpoint_mjd)
        self.science.add(idx, visit.band, found["sci"], found["sci_err"], visit.midpoint_mjd)

    def mean_position(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean ra, dec (deg) of all sources so far of objects ``idx`` (each with at least one source)."""
        n = self.n_sources[idx]
        dec0 = self.objects.dec[idx]
        ra = self.objects.ra[idx] + self.sum_dx[idx] / n * _ARCSEC / np.cos(np.radians(dec0))
        return ra, dec0 + self.sum_dy[idx] / n * _ARCSEC

    def position_cov(self, idx: np.ndarray) -> np.ndarray:
        """ra/dec covariance of the mean position (deg^2); 0 for a single source."""
        n = self.n_sources[idx]
        cov = self.sum_dxdy[idx] / n - (self.sum_dx[idx] / n) * (self.sum_dy[idx] / n)
        return np.where(n > 1, cov / n * _ARCSEC**2, 0.0)


@dataclass
class _Survey:
    """Simulation state carried from visit to visit."""

    spec: DemoSpec
    rng: np.random.Generator
    objects: _Objects
    history: _History
    ss_object_ids: np.ndarray
    next_source_id: int = _SOURCE_ID_START
    next_forced_id: int = _FORCED_ID_START
    retired: np.ndarray | None = None  # objects closed by a dedup run: never detected or measured again
    #: every DiaSource / DiaForcedSource row written so far, by chunk (re-emission and record targets): only the
    #: columns the records use, with the file and row it came from (:func:`_written_rows` reads full rows back), so
    #: memory grows by ~50 bytes per row written instead of the whole export
    written: dict[str, list[pa.Table]] = field(default_factory=lambda: {"DiaSource": [], "DiaForcedSource": []})
    files: dict[str, list[Path]] = field(default_factory=lambda: {"DiaSource": [], "DiaForcedSource": []})

    def new_source_ids(self, n: int) -> np.ndarray:
        ids = np.arange(self.next_source_id, self.next_source_id + n, dtype=np.int64)
        self.next_source_id += n
        return ids

    def new_forced_ids(self, n: int) -> np.ndarray:
        ids = np.arange(self.next_forced_id, self.next_forced_id + n, dtype=np.int64)
        self.next_forced_id += n
        return ids


def _detector_lookup() -> np.ndarray:
    """Detector id of each focal-plane grid cell ``[row, column]``; -1 in the empty corner blocks."""
    col, row = np.meshgrid(np.arange(_GRID), np.arange(_GRID))
    edge = _GRID - _CORNER
    corner = ((col < _CORNER) | (col >= edge)) & ((row < _CORNER) | (row >= edge))
    lookup = np.full((_GRID, _GRID), -1, np.int16)
    lookup[~corner] = np.arange(np.count_nonzero(~corner))
    return lookup


_DETECTORS: Final = _detector_lookup()


def _focal_plane(ra: np.ndarray, dec: np.ndarray, visit: _Visit) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detector (-1 off the focal plane) and pixel x, y of sky positions in a visit (flat-sky approximation)."""
    u = (ra - visit.ra) * np.cos(np.radians(visit.dec)) / _CELL_DEG + _GRID / 2
    v = (dec - visit.dec) / _CELL_DEG + _GRID / 2
    col = np.floor(u).astype(np.int64)
    row = np.floor(v).astype(np.int64)
    inside = (col >= 0) & (col < _GRID) & (row >= 0) & (row < _GRID)
    detector = np.full(len(ra), -1, np.int16)
    detector[inside] = _DETECTORS[row[inside], col[inside]]
    return detector, (u - col) * _DETECTOR_PIXELS, (v - row) * _DETECTOR_PIXELS


def _uniform_disk(
    rng: np.random.Generator, n: int, ra0: float, dec0: float, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points uniform in a small disk (flat-sky approximation)."""
    r = radius * np.sqrt(rng.random(n))
    theta = 2 * np.pi * rng.random(n)
    return ra0 + r * np.cos(theta) / np.cos(np.radians(dec0)), dec0 + r * np.sin(theta)


def _near_pixel_boundary(n: int, spec: DemoSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points within ``_DRIFT_OFFSET`` of an order-6 HEALPix pixel boundary, within ~1 deg of the centre.

    Each point starts from a random diameter of the 1-deg circle around the field centre. Its two ends are 2 deg
    apart, hence in different pixels (order-6 pixels are < 2 deg across). Bisection along it finds where the
    pixel changes, and the point goes a random ±``_DRIFT_OFFSET`` from there along the diameter.
    """
    cos0 = np.cos(np.radians(spec.dec_center))
    theta = rng.uniform(0, 2 * np.pi, n)
    ux, uy = np.cos(theta), np.sin(theta)

    def position(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sky position at ``t`` deg along each diameter (from -1 to 1)."""
        return spec.ra_center + t * ux / cos0, spec.dec_center + t * uy

    start = radec2pix(_DRIFT_ORDER, *position(np.full(n, -1.0)))
    low, high = np.full(n, -1.0), np.full(n, 1.0)
    for _ in range(40):
        mid = (low + high) / 2
        same = radec2pix(_DRIFT_ORDER, *position(mid)) == start
        low, high = np.where(same, mid, low), np.where(same, high, mid)
    return position(high + rng.uniform(-_DRIFT_OFFSET, _DRIFT_OFFSET, n) * _ARCSEC)


def _make_objects(spec: DemoSpec, rng: np.random.Generator) -> _Objects:
    """Draw the static truth of all objects."""
    n = spec.n_objects
    ra, dec = _uniform_disk(rng, n, spec.ra_center, spec.dec_center, spec.field_radius)
    base = 10 ** rng.uniform(1, np.log10(30_000), n)
    template = base[:, None] * 10 ** (-0.4 * rng.normal(0, 0.3, (n, len(BANDS))))
    p_detect = rng.uniform(0.2, 0.9, n)
    position_sigma = np.full(n, _POSITION_SIGMA)
    nights = np.arange(len(spec.nights))
    appear_night = rng.integers(0, len(spec.nights), n)
    duty_cycle = rng.uniform(*_DUTY_CYCLE, n)
    active = (nights >= appear_night[:, None]) & (rng.random((n, len(nights))) < duty_cycle[:, None])
    drift = rng.choice(n, round(n * spec.drift_fraction), replace=False)
    ra[drift], dec[drift] = _near_pixel_boundary(len(drift), spec, rng)
    p_detect[drift] = _DRIFT_DETECT_PROBABILITY
    position_sigma[drift] = _DRIFT_POSITION_SIGMA
    active[drift] = True
    twin_of = np.full(n, -1, np.int64)
    n_twins = min(round(n * spec.twin_fraction), (n - len(drift)) // 2) if spec.changes else 0
    if n_twins:
        # half the pairs start from a drifting object (on a pixel boundary), so some twins sit across it
        others = np.setdiff1d(np.arange(n), drift)
        on_boundary = drift[: min(n_twins // 2, len(drift))]
        firsts = np.concatenate([on_boundary, rng.choice(others, n_twins - len(on_boundary), replace=False)])
        seconds = rng.choice(np.setdiff1d(others, firsts), n_twins, replace=False)
        angle = rng.uniform(0, 2 * np.pi, n_twins)
        dec[seconds] = dec[firsts] + _TWIN_SEPARATION * np.sin(angle) * _ARCSEC
        ra[seconds] = ra[firsts] + _TWIN_SEPARATION * np.cos(angle) * _ARCSEC / np.cos(np.radians(dec[firsts]))
        twin_of[seconds] = firsts
        for i in (firsts, seconds):
            p_detect[i] = _DRIFT_DETECT_PROBABILITY
            position_sigma[i] = _POSITION_SIGMA
        active[firsts] = True
        active[seconds] = True
        active[seconds[n_twins // 2:], :2] = False  # these duplicates appear on the third night: a later dedup run
    return _Objects(
        ra=ra,
        dec=dec,
        template=template,
        amplitude=rng.uniform(0.05, 0.95, n),
        period=10 ** rng.uniform(np.log10(0.05), np.log10(30), n),
        phase=rng.uniform(0, 2 * np.pi, n),
        p_detect=p_detect,
        position_sigma=position_sigma,
        active=active,
        twin_of=twin_of,
    )


def _dayobs_midnight(night: str) -> int:
    """Unix seconds of 00:00 UTC on the dayobs date."""
    return int(dt.datetime.fromisoformat(night).replace(tzinfo=dt.UTC).timestamp())


def _chunk_plans(spec: DemoSpec) -> list[_ChunkPlan]:
    """All chunks of the run in id order, with the store times of their visits."""
    spacing = CHUNK_SECONDS * max(1, _OBSERVING_WINDOWS // spec.chunks_per_night)
    gap = (_LAST_STORE - _FIRST_STORE_MIN) / spec.visits_per_chunk
    store_offsets = _LAST_STORE - gap * np.arange(spec.visits_per_chunk)[::-1]
    empty_night = min(1, len(spec.nights) - 1)
    plans: list[_ChunkPlan] = []
    for night_index, night in enumerate(spec.nights):
        first = _dayobs_midnight(night) + _NIGHT_START
        for k in range(spec.chunks_per_night):
            chunk_id = first + k * spacing
            empty = night_index == empty_night and k == spec.chunks_per_night - 1
            stores = () if empty else tuple(float(chunk_id + offset) for offset in store_offsets)
            plans.append(_ChunkPlan(chunk_id, night_index, night, k, stores, forced_photometry=bool(plans),
                                    dedup=spec.changes and night_index == 2 and k == spec.chunks_per_night - 1,
                                    records=spec.changes and night_index >= 1 and k == min(1, spec.chunks_per_night - 1)
                                    and not empty))
        if spec.changes and night_index == 0 and len(spec.nights) > 1:  # daytime before the next night: updates only
            daytime = _dayobs_midnight(spec.nights[1]) + _DAYTIME_UPDATES
            plans.append(_ChunkPlan(daytime, 1, spec.nights[1], -1, (), forced_photometry=False, dedup=True))
    return plans


def _mjd(unix_seconds: float) -> float:
    return unix_seconds / 86400 + _MJD_UNIX_EPOCH


def _make_visit(plan: _ChunkPlan, number: int, store_time: float, spec: DemoSpec, rng: np.random.Generator) -> _Visit:
    """Visit ``number`` (0-based) of a chunk; visit ids are ``YYYYMMDD`` * 100000 + sequence number in the night."""
    sequence = plan.index_in_night * spec.visits_per_chunk + number + 1
    ra, dec = _uniform_disk(rng, 1, spec.ra_center, spec.dec_center, spec.field_radius / 2)
    fwhm = rng.uniform(0.6, 1.2)  # arcsec
    return _Visit(
        visit_id=int(plan.night.replace("-", "")) * 100_000 + sequence,
        band=int(rng.choice(len(BANDS), p=_BAND_WEIGHTS)),
        midpoint_mjd=_mjd(store_time - _STORE_DELAY),
        store_mjd=_mjd(store_time),
        ra=float(ra[0]),
        dec=float(dec[0]),
        psf_moment=(fwhm / 2.355) ** 2,
    )


def _measure_flux(
    rng: np.random.Generator, true_flux: np.ndarray, template: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Difference-image (psf) and science-image fluxes with their errors, nJy."""
    sci_err = np.hypot(_FLUX_FLOOR, _FLUX_FRACTION * true_flux)
    psf_err = np.hypot(sci_err, _TEMPLATE_NOISE)
    sci = true_flux + rng.standard_normal(len(true_flux)) * sci_err
    psf = true_flux - template + rng.standard_normal(len(true_flux)) * psf_err
    return psf, psf_err, sci, sci_err


def _object_detections(survey: _Survey, visit: _Visit, night_index: int) -> tuple[np.ndarray, Columns]:
    """Objects detected in a visit (indices) and their measurements."""
    objects, rng = survey.objects, survey.rng
    detector, _, _ = _focal_plane(objects.ra, objects.dec, visit)
    candidate = (detector >= 0) & objects.active[:, night_index] & ~survey.retired
    idx = np.flatnonzero(candidate & (rng.random(len(objects.ra)) < objects.p_detect))
    sigma = objects.position_sigma[idx]
    dec = objects.dec[idx] + rng.standard_normal(len(idx)) * sigma * _ARCSEC
    ra = objects.ra[idx] + rng.standard_normal(len(idx)) * sigma * _ARCSEC / np.cos(np.radians(objects.dec[idx]))
    detector, x, y = _focal_plane(ra, dec, visit)
    on_chip = detector >= 0  # a source scattered into a gap is not detected
    idx = idx[on_chip]
    template = objects.template[idx, visit.band]
    psf, psf_err, sci, sci_err = _measure_flux(rng, objects.true_flux(idx, visit.band, visit.midpoint_mjd), template)
    found = {
        "ra": ra[on_chip],
        "dec": dec[on_chip],
        "sigma": sigma[on_chip],
        "detector": detector[on_chip],
        "x": x[on_chip],
        "y": y[on_chip],
        "psf": psf,
        "psf_err": psf_err,
        "sci": sci,
        "sci_err": sci_err,
        "template": template,
        "trail_length": np.abs(rng.normal(0, 0.3, len(idx))),
    }
    return idx, found


def _solar_system_detections(survey: _Survey, visit: _Visit, n: int) -> Columns:
    """``n`` moving-object detections at random places on the focal plane (no template flux, long trails)."""
    rng = survey.rng
    rows, cols = np.nonzero(_DETECTORS >= 0)
    cell = rng.integers(0, len(rows), n)
    u = cols[cell] + rng.random(n) - _GRID / 2
    v = rows[cell] + rng.random(n) - _GRID / 2
    ra = visit.ra + u * _CELL_DEG / np.cos(np.radians(visit.dec))
    dec = visit.dec + v * _CELL_DEG
    detector, x, y = _focal_plane(ra, dec, visit)
    template = np.zeros(n)
    psf, psf_err, sci, sci_err = _measure_flux(rng, 10 ** rng.uniform(2.3, 3.7, n), template)
    return {
        "ra": ra,
        "dec": dec,
        "sigma": np.full(n, _POSITION_SIGMA),
        "detector": detector,
        "x": x,
        "y": y,
        "psf": psf,
        "psf_err": psf_err,
        "sci": sci,
        "sci_err": sci_err,
        "template": template,
        "trail_length": rng.uniform(1, 8, n),
    }


def _dia_source_columns(visit: _Visit, found: Columns, rng: np.random.Generator) -> Columns:
    """All DiaSource columns (APDB 10.0.0) for detections with ids already set."""
    n = len(found["ra"])
    psf, psf_err = found["psf"], found["psf_err"]
    pos_err = found["sigma"] * _ARCSEC
    bbox = rng.integers(15, 41, n).astype(np.int32)
    ndata = bbox**2
    chi2 = rng.chisquare(ndata)
    source_ids = found["diaSourceId"]
    has_parent = rng.random(n) < _PARENT_RATE
    has_parent[:1] = False
    columns: Columns = {
        "diaSourceId": source_ids,
        "visit": np.full(n, visit.visit_id, np.int64),
        "detector": found["detector"],
        "diaObjectId": found["diaObjectId"],
        "ssObjectId": found["ssObjectId"],
        "parentDiaSourceId": np.where(has_parent, np.roll(source_ids, 1), 0),
        "ssObjectReassocTimeMjdTai": np.full(n, np.nan),
        "midpointMjdTai": np.full(n, visit.midpoint_mjd),
        "exposureTime": np.full(n, _EXPOSURE_TIME),
        "ra": found["ra"],
        "raErr": pos_err,
        "dec": found["dec"],
        "decErr": pos_err,
        "ra_dec_Cov": pos_err**2 * rng.uniform(-0.1, 0.1, n),
        "x": found["x"],
        "xErr": found["sigma"] / _PIXEL_SCALE,
        "y": found["y"],
        "yErr": found["sigma"] / _PIXEL_SCALE,
        "apFlux": psf * rng.uniform(0.95, 1.05, n),
        "apFluxErr": psf_err * 1.2,
        "isNegative": psf < 0,
        "snr": np.abs(psf) / psf_err,
        "psfFlux": psf,
        "psfFluxErr": psf_err,
        "psfLnL": -0.5 * chi2,
        "psfChi2": chi2,
        "psfNdata": ndata,
        "trailFlux": psf * rng.uniform(0.98, 1.05, n),
        "trailFluxErr": psf_err * 1.1,
        "trailRa": found["ra"],
        "trailRaErr": pos_err * 2,
        "trailDec": found["dec"],
        "trailDecErr": pos_err * 2,
        "trailLength": found["trail_length"],
        "trailLengthErr": 0.1 + 0.05 * found["trail_length"],
        "trailAngle": rng.uniform(-90, 90, n),
        "trailAngleErr": rng.uniform(1, 10, n),
        "trailChi2": rng.chisquare(ndata),
        "trailNdata": ndata,
        "trailAlgorithm": np.ones(n, np.int32),
        "dipoleMeanFlux": psf * rng.uniform(0.4, 0.6, n),
        "dipoleMeanFluxErr": psf_err,
        "dipoleFluxDiff": rng.standard_normal(n) * psf_err,
        "dipoleFluxDiffErr": psf_err * 1.4,
        "dipoleLength": np.abs(rng.normal(0, 0.2, n)),
        "dipoleAngle": rng.uniform(0, 180, n),
        "dipoleChi2": rng.chisquare(ndata),
        "dipoleNdata": ndata,
        "scienceFlux": found["sci"],
        "scienceFluxErr": found["sci_err"],
        "templateFlux": found["template"] + rng.standard_normal(n) * _TEMPLATE_NOISE,
        "templateFluxErr": np.full(n, _TEMPLATE_NOISE),
        "ixx": visit.psf_moment + np.abs(rng.normal(0, 0.02, n)),
        "iyy": visit.psf_moment + np.abs(rng.normal(0, 0.02, n)),
        "ixy": rng.normal(0, 0.005, n),
        "ixxPSF": np.full(n, visit.psf_moment),
        "iyyPSF": np.full(n, visit.psf_moment),
        "ixyPSF": np.zeros(n),
        "extendedness": rng.random(n) ** 4,
        "reliability": rng.beta(8, 1.5, n),
        "reliabilityVersion": np.full(n, _RELIABILITY_VERSION),
        "band": np.full(n, BANDS[visit.band]),
        "dipoleFitAttempted": np.ones(n, bool),
        "timeProcessedMjdTai": np.full(n, visit.store_mjd),
        "timeWithdrawnMjdTai": np.full(n, np.nan),
        "bboxSize": bbox,
    }
    generic_flags = [
        col["name"]
        for col in apdb.columns("DiaSource")
        if col["arrow_type"] == "bool" and col["name"] not in columns and col["name"] != "pixelFlags"
    ]
    for name in generic_flags:
        columns[name] = rng.random(n) < _FLAG_RATE
    columns["pixelFlags"] = np.any([columns[name] for name in generic_flags if name.startswith("pixelFlags_")], axis=0)
    return columns


def _dia_object_columns(idx: np.ndarray, history: _History, visit: _Visit) -> Columns:
    """New DiaObject versions of objects ``idx`` after this visit's detections."""
    n_sources = history.n_sources[idx]
    ra, dec = history.mean_position(idx)
    pos_err = history.objects.position_sigma[idx] / np.sqrt(n_sources) * _ARCSEC
    columns: Columns = {
        "diaObjectId": history.dia_object_id[idx],
        "validityStartMjdTai": np.full(len(idx), visit.store_mjd),
        "validityEndMjdTai": np.full(len(idx), np.nan),
        "ra": ra,
        "raErr": pos_err,
        "dec": dec,
        "decErr": pos_err,
        "ra_dec_Cov": history.position_cov(idx),
        "firstDiaSourceMjdTai": history.first_mjd[idx],
        "lastDiaSourceMjdTai": history.last_mjd[idx],
        "nDiaSources": n_sources,
    }
    for kind, stats in (("psf", history.psf), ("science", history.science), ("fp", history.forced)):
        summary = stats.summary(idx)
        for stat in _OBJECT_FLUX_STATS[kind]:
            for b, band in enumerate(BANDS):
                columns[f"{band}_{kind}Flux{stat}"] = summary[stat][:, b]
    return columns


def _forced_photometry(survey: _Survey, visit: _Visit) -> Columns:
    """Forced measurements at the current mean position of every footprint object with enough detections."""
    history, rng = survey.history, survey.rng
    eligible = np.flatnonzero((history.n_sources >= _HISTORY_THRESHOLD) & ~survey.retired)
    ra, dec = history.mean_position(eligible)
    detector, _, _ = _focal_plane(ra, dec, visit)
    on_chip = detector >= 0
    idx = eligible[on_chip]
    template = survey.objects.template[idx, visit.band]
    true_flux = survey.objects.true_flux(idx, visit.band, visit.midpoint_mjd)
    psf, psf_err, sci, sci_err = _measure_flux(rng, true_flux, template)
    history.forced.add(idx, visit.band, psf, psf_err, visit.midpoint_mjd)
    n = len(idx)
    return {
        "diaForcedSourceId": survey.new_forced_ids(n),
        "diaObjectId": history.dia_object_id[idx],
        "ra": ra[on_chip],
        "dec": dec[on_chip],
        "visit": np.full(n, visit.visit_id, np.int64),
        "detector": detector[on_chip],
        "psfFlux": psf,
        "psfFluxErr": psf_err,
        "midpointMjdTai": np.full(n, visit.midpoint_mjd),
        "scienceFlux": sci,
        "scienceFluxErr": sci_err,
        "band": np.full(n, BANDS[visit.band]),
        "timeProcessedMjdTai": np.full(n, visit.store_mjd),
        "timeWithdrawnMjdTai": np.full(n, np.nan),
    }


def _concat(parts: list[Columns]) -> Columns:
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def _simulate_visit(
    survey: _Survey, visit: _Visit, night_index: int, forced_photometry: bool
) -> dict[str, Columns]:
    """Rows each dataset gets from one visit's ``store()``."""
    rng = survey.rng
    idx, found = _object_detections(survey, visit, night_index)
    fraction = survey.spec.solar_system_fraction
    solar = _solar_system_detections(survey, visit, int(rng.poisson(len(idx) * fraction / (1 - fraction))))
    n_solar = len(solar["ra"])
    source_ids = survey.new_source_ids(len(idx) + n_solar)
    found["diaSourceId"], solar["diaSourceId"] = source_ids[: len(idx)], source_ids[len(idx) :]
    found["diaObjectId"] = survey.history.assign_ids(idx, found["diaSourceId"])
    found["ssObjectId"] = np.zeros(len(idx), np.int64)
    solar["diaObjectId"] = np.zeros(n_solar, np.int64)
    solar["ssObjectId"] = rng.choice(survey.ss_object_ids, n_solar)
    survey.history.record(idx, found, visit)
    rows = {
        "DiaObject": _dia_object_columns(idx, survey.history, visit),
        "DiaSource": _dia_source_columns(visit, _concat([found, solar]), rng),
    }
    if forced_photometry:
        rows["DiaForcedSource"] = _forced_photometry(survey, visit)
    return rows


def _to_arrow(values: np.ndarray, field: pa.Field, nullable: bool) -> pa.Array:
    """NaN in float columns and 0 in nullable integer columns (ids, as in ``diaPipe``) become null."""
    mask = None
    if pa.types.is_floating(field.type):
        mask = np.isnan(values)
    elif pa.types.is_integer(field.type) and nullable:
        mask = values == 0
    if mask is not None and not mask.any():
        mask = None
    if mask is not None and not nullable:
        raise ValueError(f"generator bug: null in non-nullable column {field.name}")
    return pa.array(values.astype(field.type.to_pandas_dtype()), type=field.type, mask=mask)


def _to_table(columns: Columns, dataset: str, schema_version: str, chunk_id: int) -> pa.Table:
    """Table with exactly the export schema of ``dataset`` under ``schema_version``."""
    nullable = {col["name"]: col["nullable"] for col in apdb.columns(dataset, schema_version)}
    schema = apdb.export_schema(dataset, schema_version)
    n_rows = len(next(iter(columns.values())))
    values = {**columns, apdb.REPLICA_CHUNK_COLUMN: np.full(n_rows, chunk_id, np.int64)}
    arrays = [_to_arrow(values[field.name], field, nullable.get(field.name, True)) for field in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def _is_flat(spec: DemoSpec, night_index: int) -> bool:
    return night_index >= spec.flat_layout_from


def _schema_version(spec: DemoSpec, night_index: int) -> str:
    return "10.0.0" if night_index >= spec.schema_10_from else "9.1.1"


def _chunk_dir(root: Path, plan: _ChunkPlan, spec: DemoSpec) -> Path:
    """``ROOT/<chunk_id>`` (flat) or ``ROOT/<UTC date of last_update_time>/<chunk_id>`` (dated)."""
    if _is_flat(spec, plan.night_index):
        return root / str(plan.chunk_id)
    date = dt.datetime.fromtimestamp(plan.last_update_time, dt.UTC)
    return root / f"{date:%Y/%m/%d}" / str(plan.chunk_id)


def _manifest(plan: _ChunkPlan, spec: DemoSpec, rows: dict[str, int], files: dict[str, dict], n_updates: int = 0
              ) -> tuple[str, dict]:
    """File name and content of a chunk manifest (field order as in dax_ppdb ``bigquery/manifest.py``)."""
    chunk_id = str(plan.chunk_id)
    unique_id = str(uuid.UUID(bytes=np.random.default_rng([spec.seed, plan.chunk_id]).bytes(16), version=4))
    schema_version = _schema_version(spec, plan.night_index)
    exported_at = str(dt.datetime.fromtimestamp(plan.last_update_time + _EXPORT_DELAY, dt.UTC))
    last_update_time = f"{plan.last_update_time:.3f}"
    if _is_flat(spec, plan.night_index):
        return "manifest.json", {
            "schema_version": schema_version,
            "replica_chunk_id": chunk_id,
            "unique_id": unique_id,
            "exported_at": exported_at,
            "last_update_time": last_update_time,
            "compression_format": "snappy",
            "files": files,
        }
    manifest = {
        "replica_chunk_id": chunk_id,
        "unique_id": unique_id,
        "schema_version": schema_version,
        "exported_at": exported_at,
        "last_update_time": last_update_time,
        "table_data": {dataset: {"row_count": count} for dataset, count in rows.items()},
        "compression_format": "snappy",
    }
    if plan.night_index == 0 and not n_updates:
        return f"chunk_{chunk_id}.manifest.json", manifest
    return "manifest.json", {**manifest, "update_count": n_updates}


def _file_entry(path: Path, rows: int) -> dict:
    return {"row_count": rows, "checksum": hashlib.sha256(path.read_bytes()).hexdigest(),
            "size_bytes": path.stat().st_size}


def _write_chunk(root: Path, plan: _ChunkPlan, spec: DemoSpec, tables: dict[str, pa.Table],
                 records: pa.Table | None = None) -> ChunkInfo:
    """Write the parquet files (non-empty tables only), then the manifest via a temporary name."""
    chunk_dir = _chunk_dir(root, plan, spec)
    chunk_dir.mkdir(parents=True)
    rows: dict[str, int] = {}
    files: dict[str, dict] = {}
    for dataset in apdb.DATASETS:
        table = tables.get(dataset)
        rows[dataset] = 0 if table is None else table.num_rows
        if rows[dataset] == 0:
            continue
        path = chunk_dir / f"{dataset}.parquet"
        pq.write_table(table, path, compression="snappy", row_group_size=10_000)
        files[path.name] = _file_entry(path, rows[dataset])
    if records is not None and records.num_rows:
        path = chunk_dir / "updates.parquet"
        pq.write_table(records, path)
        files = {path.name: _file_entry(path, records.num_rows), **files}  # written first, as dax_ppdb does
    name, manifest = _manifest(plan, spec, rows, files, 0 if records is None else records.num_rows)
    temporary = chunk_dir / f"{name}.tmp"
    temporary.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(temporary, chunk_dir / name)
    return ChunkInfo(plan.chunk_id, plan.night, chunk_dir, rows)


def generate_ppdb(root: Path, spec: DemoSpec = DemoSpec()) -> list[ChunkInfo]:
    """Write the export tree under root; return what was written (sorted by chunk_id)."""
    root = Path(root)
    rng = np.random.default_rng(spec.seed)
    objects = _make_objects(spec, rng)
    ss_object_ids = rng.integers(1, 2**62, max(1, spec.n_objects // 10), dtype=np.int64)
    survey = _Survey(spec, rng, objects, _History(objects), ss_object_ids, retired=np.zeros(spec.n_objects, bool))
    written = []
    for plan in _chunk_plans(spec):
        parts: dict[str, list[Columns]] = {dataset: [] for dataset in apdb.DATASETS}
        for number, store_time in enumerate(plan.store_times):
            visit = _make_visit(plan, number, store_time, spec, rng)
            for dataset, columns in _simulate_visit(survey, visit, plan.night_index, plan.forced_photometry).items():
                parts[dataset].append(columns)
        version = _schema_version(spec, plan.night_index)
        tables = {
            dataset: _to_table(_concat(chunks), dataset, version, plan.chunk_id)
            for dataset, chunks in parts.items()
            if chunks
        }
        records: list[dict] = []
        if plan.records:
            records += _other_records(survey, plan, tables)
            _re_emit(survey, plan, tables)
        if plan.dedup:
            records += _dedup_records(survey, plan, len(records))
        info = _write_chunk(root, plan, spec, tables, _records_table(records, plan) if records else None)
        for dataset in survey.written:
            if dataset in tables and tables[dataset].num_rows:
                _remember(survey, dataset, tables[dataset], info.path / f"{dataset}.parquet")
        written.append(info)
    return written


# -- changes: update records and re-emitted rows ---------------------------------------------------------------
def _update_time_ns(plan: _ChunkPlan) -> int:
    """Records of a chunk are stored after its last visit (night chunks) or early in its window (daytime)."""
    return (plan.chunk_id + (_LAST_STORE + 5 if plan.store_times else 100)) * 1_000_000_000


def _records_table(records: list[dict], plan: _ChunkPlan) -> pa.Table:
    return pa.table({
        "apdb_replica_chunk": pa.array([plan.chunk_id] * len(records), pa.int64()),
        "update_time_ns": pa.array([r.pop("_time") for r in records], pa.int64()),
        "update_order": pa.array([r.pop("_order") for r in records], pa.int64()),
        "json_payload": pa.array([json.dumps(r) for r in records], pa.string()),
    })


def _record(kind: str, time_ns: int, order: int, **fields: object) -> dict:
    clean = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in fields.items()}
    return {"_time": time_ns, "_order": order, "update_type": kind, **clean}


_REMEMBERED = {  # columns of written rows the records and re-emitted copies use
    "DiaSource": ("diaSourceId", "diaObjectId", "ra", "dec", "midpointMjdTai"),
    "DiaForcedSource": ("diaObjectId", "visit", "detector", "ra", "dec", "midpointMjdTai"),
}


def _remember(survey: _Survey, dataset: str, table: pa.Table, path: Path) -> None:
    """Keep the record columns of a written table, with the file and row each row can be read back from."""
    number = len(survey.files[dataset])
    survey.files[dataset].append(path)
    slim = table.select(list(_REMEMBERED[dataset]))
    slim = slim.append_column("_file", pa.array(np.full(table.num_rows, number, np.int32)))
    survey.written[dataset].append(slim.append_column("_row", pa.array(np.arange(table.num_rows, dtype=np.int64))))


def _written(survey: _Survey, dataset: str) -> pa.Table | None:
    """The remembered columns of every row written so far (``_file``, ``_row``: where the full row is)."""
    parts = survey.written[dataset]
    return pa.concat_tables(parts, promote_options="permissive") if parts else None


def _written_rows(survey: _Survey, dataset: str, slim: pa.Table) -> pa.Table:
    """The full rows (all columns, as written) of the remembered rows ``slim``, in their order."""
    files = slim["_file"].to_numpy()
    rows = slim["_row"].to_numpy()
    parts = []
    for number in dict.fromkeys(files.tolist()):  # in order of first appearance
        parts.append(pq.read_table(survey.files[dataset][number]).take(pa.array(rows[files == number])))
    table = pa.concat_tables(parts, promote_options="permissive")
    if len(parts) > 1:  # restore the order of ``slim`` across files
        order = np.concatenate([np.flatnonzero(files == n) for n in dict.fromkeys(files.tolist())])
        table = table.take(pa.array(np.argsort(order)))
    return table


def _source_payload(row: dict) -> dict:
    return {"diaSourceId": row["diaSourceId"], "ra": row["ra"], "dec": row["dec"],
            "midpointMjdTai": row["midpointMjdTai"]}


def _other_records(survey: _Survey, plan: _ChunkPlan, tables: dict[str, pa.Table]) -> list[dict]:
    """Withdrawals, an SSObject reassignment, a source reassigned twice, an nDiaSources pair (see module doc)."""
    rng, time_ns = survey.rng, _update_time_ns(plan)
    earlier = _written(survey, "DiaSource")
    if earlier is None or "DiaSource" not in tables:
        return []
    earlier_rows = earlier.filter(pa.compute.is_valid(earlier["diaObjectId"]))
    here = tables["DiaSource"].filter(pa.compute.is_valid(tables["DiaSource"]["diaObjectId"])).to_pylist()
    if earlier_rows.num_rows < 4 or not here:
        return []
    picks = rng.choice(earlier_rows.num_rows, 4, replace=False)
    earlier = {int(i): earlier_rows.slice(int(i), 1).to_pylist()[0] for i in picks}
    withdraw_mjd = _mjd(time_ns / 1e9)
    out = [
        _record("withdraw_diasource", time_ns, 0, timeWithdrawnMjdTai=withdraw_mjd, **_source_payload(earlier[picks[0]])),
        _record("withdraw_diasource", time_ns, 1, timeWithdrawnMjdTai=withdraw_mjd,
                **_source_payload(here[int(rng.integers(len(here)))])),
        _record("reassign_diasource_to_ssobject", time_ns, 2, ssObjectId=int(rng.choice(survey.ss_object_ids)),
                ssObjectReassocTimeMjdTai=withdraw_mjd, **_source_payload(earlier[picks[1]])),
    ]
    # the same source reassigned twice: to another object, then 1 s later to a third one (the later record wins)
    source, first, second = earlier[picks[2]], earlier[picks[3]], here[0]
    out.append(_record("reassign_diasource_to_diaobject", time_ns, 3, diaObjectId=first["diaObjectId"],
                       **_source_payload(source)))
    out.append(_record("reassign_diasource_to_diaobject", time_ns + 1_000_000_000, 0,
                       diaObjectId=second["diaObjectId"], **_source_payload(source)))
    # an nDiaSources pair: the record stored last has the older time and loses
    obj = tables["DiaObject"].slice(0, 1).to_pylist()[0]
    for delta, count in ((0, obj["nDiaSources"] + 7), (-1_000_000_000, obj["nDiaSources"] + 5)):
        out.append(_record("update_n_dia_sources", time_ns + delta, 4, diaObjectId=obj["diaObjectId"],
                           nDiaSources=int(count), ra=obj["ra"], dec=obj["dec"]))
    forced = _written(survey, "DiaForcedSource")
    if forced is not None and forced.num_rows:
        row = forced.slice(int(rng.integers(forced.num_rows)), 1).to_pylist()[0]
        out.append(_record("withdraw_diaforcedsource", time_ns, 5, diaObjectId=row["diaObjectId"], visit=row["visit"],
                           detector=row["detector"], timeWithdrawnMjdTai=withdraw_mjd, ra=row["ra"], dec=row["dec"],
                           midpointMjdTai=row["midpointMjdTai"]))
    return out


def _re_emit(survey: _Survey, plan: _ChunkPlan, tables: dict[str, pa.Table]) -> None:
    """Append re-emitted copies of earlier rows to this chunk's tables (same ids, this chunk's number)."""
    rng = survey.rng
    for dataset, count in (("DiaSource", 4), ("DiaForcedSource", 1)):
        earlier = _written(survey, dataset)
        if earlier is None or dataset not in tables or earlier.num_rows < count:
            continue
        earlier = earlier.filter(pa.compute.is_valid(earlier["diaObjectId"]))
        picked = earlier.take(pa.array(np.sort(rng.choice(earlier.num_rows, count, replace=False))))
        copies = _written_rows(survey, dataset, picked)
        target = tables[dataset].schema  # the copy is written with this chunk's schema version
        copies = pa.Table.from_arrays([copies[f.name].cast(f.type) if f.name in copies.column_names
                                       else pa.nulls(copies.num_rows, f.type) for f in target], schema=target)
        jitter = rng.normal(0, 0.05, copies.num_rows) * _ARCSEC
        columns = {
            "ra": pa.array(copies["ra"].to_numpy() + jitter, pa.float64()),
            "dec": pa.array(copies["dec"].to_numpy() - jitter, pa.float64()),
            apdb.REPLICA_CHUNK_COLUMN: pa.array([plan.chunk_id] * copies.num_rows, pa.int64()),
        }
        if dataset == "DiaSource":  # one copy comes under another object
            ids = copies["diaObjectId"].to_numpy()
            other = tables["DiaObject"]["diaObjectId"][0].as_py()
            columns["diaObjectId"] = pa.array(np.r_[other, ids[1:]], pa.int64())
        for name, values in columns.items():
            copies = copies.set_column(copies.schema.get_field_index(name), name, values)
        tables[dataset] = pa.concat_tables([tables[dataset], copies])


def _dedup_records(survey: _Survey, plan: _ChunkPlan, first_order: int) -> list[dict]:
    """A deduplication run over the twins detected so far (ap_association ``DeduplicateAllSkyDiaObjectsTask``)."""
    history, objects = survey.history, survey.objects
    sources = _written(survey, "DiaSource")
    time_ns, order, out = _update_time_ns(plan), first_order, []
    end_mjd = _mjd(time_ns / 1e9)
    for twin in np.flatnonzero(objects.twin_of >= 0):
        pair = np.array([objects.twin_of[twin], twin])
        ids = history.dia_object_id[pair]
        if (ids == 0).any() or survey.retired[pair].any() or sources is None:
            continue
        keep, drop = pair[np.argsort(ids)]  # the older object (smaller id) is kept
        keep_id, drop_id = int(history.dia_object_id[keep]), int(history.dia_object_id[drop])
        moved = sources.filter(pa.compute.equal(sources["diaObjectId"], drop_id)).to_pylist()
        for row in moved:
            out.append(_record("reassign_diasource_to_diaobject", time_ns, order, diaObjectId=keep_id,
                               **_source_payload(row)))
            order += 1
        history.n_sources[keep] += len(moved)
        ra, dec = history.mean_position(np.array([keep, drop]))
        out.append(_record("update_n_dia_sources", time_ns, order, diaObjectId=keep_id,
                           nDiaSources=int(history.n_sources[keep]), ra=ra[0], dec=dec[0]))
        out.append(_record("close_diaobject_validity", time_ns, order + 1, diaObjectId=drop_id,
                           validityEndMjdTai=end_mjd, nDiaSources=None, ra=ra[1], dec=dec[1]))
        order += 2
        survey.retired[drop] = True
    return out


def _night_summary(night: str, infos: list[ChunkInfo], spec: DemoSpec) -> str:
    night_index = spec.nights.index(night)
    layout = "flat" if _is_flat(spec, night_index) else "dated"
    counts = ", ".join(f"{dataset} {sum(info.rows[dataset] for info in infos)}" for dataset in apdb.DATASETS)
    return f"{night}: {len(infos)} chunks ({layout} layout, APDB {_schema_version(spec, night_index)}), rows: {counts}"


def main(argv: list[str] | None = None) -> int:
    """CLI: write a demo PPDB export into an empty (or new) directory; one summary line per night."""
    defaults = DemoSpec()
    parser = argparse.ArgumentParser(
        prog="python -m ppdb_lc.generator", description="Write a deterministic demo Rubin PPDB parquet export."
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory (must be empty or absent)")
    parser.add_argument("--objects", type=int, default=defaults.n_objects, help="number of DiaObjects")
    parser.add_argument("--nights", type=int, default=len(defaults.nights), help="number of consecutive nights")
    parser.add_argument("--start", type=dt.date.fromisoformat, default=defaults.nights[0], help="first dayobs")
    parser.add_argument("--chunks-per-night", type=int, default=defaults.chunks_per_night)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        print(f"error: {args.out} exists and is not an empty directory; refusing to write into it", file=sys.stderr)
        return 2
    start: dt.date = args.start  # argparse applies ``type`` to the string default too
    try:
        spec = DemoSpec(
            n_objects=args.objects,
            nights=tuple(str(start + dt.timedelta(days=i)) for i in range(args.nights)),
            chunks_per_night=args.chunks_per_night,
            seed=args.seed,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    infos = generate_ppdb(args.out, spec)
    for night, group in groupby(infos, key=lambda info: info.night):
        print(_night_summary(night, list(group), spec))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
