"""``ppdb-lc``: look at a pending ingest or a published collection; roll back or unlock a collection.

    ppdb-lc preview --config config/config.yaml [--set key=value ...] [--json]
    ppdb-lc summary COLLECTION [--catalog NAME]
    ppdb-lc lightcurve COLLECTION DIAOBJECTID [-o FILE.png] [--quantity psfFlux|scienceFlux|scienceMag]
    ppdb-lc rollback COLLECTION [--keep N]     publish the previous version again (ledger included)
    ppdb-lc unlock COLLECTION [--force]        clear the lock of a run that is gone

``--set`` takes the same keys as ``snakemake --config`` (dotted for nested ones: ``catalog.pixel_threshold=100``);
values are parsed as YAML. Relative paths resolve against the current directory, as with ``snakemake``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ppdb_lc.settings import Settings


def apply_overrides(config: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``config`` with ``key=value`` / ``section.key=value`` overrides (values parsed as YAML)."""
    config = json.loads(json.dumps(config, default=str))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {item!r}")
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        try:
            value = yaml.safe_load(text) if text else ""
        except ValueError:  # YAML's date constructor on an impossible date (2026-13-45): the settings reject it
            value = text
        node[leaf] = value if isinstance(value, (dict, list, bool, int, float, type(None))) else str(value)
    if config.get("until") is not None and not isinstance(config["until"], str):
        config["until"] = str(config["until"])  # a bare YAML date
    return config


def load_settings(path: str | Path, overrides: Sequence[str] = ()) -> Settings:
    config = yaml.safe_load(Path(path).read_text()) or {}
    return Settings.from_config(apply_overrides(config, overrides))


def _preview(args: argparse.Namespace) -> int:
    from ppdb_lc.preview import format_preview, preview

    try:
        settings = load_settings(args.config, args.set)
    except ValueError as err:  # a bad value, e.g. until=2026-13-45
        print(f"ppdb-lc: {err}", file=sys.stderr)
        return 2
    result = preview(settings)
    print(json.dumps(result, indent=1) if args.json else format_preview(result))
    return 0


def update_lines(version: Path) -> list[str]:
    """Update records per batch (applied / superseded / pending per type) and the records still pending."""
    from ppdb_lc.ledger import read_pending

    lines = []
    for path in sorted((version / "ingest" / "batches").glob("*.json")):
        changes = json.loads(path.read_text()).get("updates") or {}
        applied = changes.get("records_applied") or {}
        if changes.get("records_received") or applied:
            lines.append(f"  updates {path.stem}: received {sum(changes['records_received'].values())}, applied "
                         + (", ".join(f"{k} {v}" for k, v in sorted(applied.items())) or "none")
                         + f"; superseded {sum((changes.get('records_superseded') or {}).values())}")
    pending = read_pending(version)
    lines.append(f"update records pending (target not ingested yet): {pending.num_rows}")
    return lines


def collection_summary(collection: Path, catalog_name: str | None = None) -> list[str]:
    """Lines describing a published collection: rows, pixels, versions, ledger nights, an example id search."""
    import lsdb
    import pyarrow.parquet as pq
    from hats.catalog import PartitionInfo, TableProperties
    from hats.catalog.dataset.collection_properties import CollectionProperties

    from ppdb_lc.catalog import pixel_files
    from ppdb_lc.ledger import read_ledger
    from ppdb_lc.versions import CollectionStateError, VersionedCollection

    store = VersionedCollection(collection)
    try:
        current = store.current()
    except CollectionStateError:  # a plain (unversioned) HATS collection directory
        current = Path(collection).resolve()
    if current is None:
        raise FileNotFoundError(f"no collection at {collection}")
    name = catalog_name or CollectionProperties.read_from_dir(current).hats_primary_table_url
    cat = current / name
    props = TableProperties.read_from_dir(cat)
    pixels = PartitionInfo.read_from_dir(cat).get_healpix_pixels()
    orders = Counter(p.order for p in pixels)
    lines = [
        f"collection {collection} -> {current.name}",
        f"catalog {name}: {props.total_rows} rows in {len(pixels)} pixels "
        f"({', '.join(f'{n} at order {o}' for o, n in sorted(orders.items()))}), sky fraction "
        f"{float(props.moc_sky_fraction or 0):.5f}",
        "versions on disk: " + (", ".join(v.name + (" (published)" if v == current else "") for v in store.versions())
                                or "none (not a versioned collection)"),
    ]
    ledger = read_ledger(current)
    by_night: dict[str, list] = {}
    for entry in ledger:
        by_night.setdefault(entry.night, []).append(entry)
    lines.append(f"ledger: {len(ledger)} chunks over {len(by_night)} nights")
    for night, entries in sorted(by_night.items()):
        rows = {ds: sum(e.rows[ds] for e in entries) for ds in entries[0].rows}
        batches = sorted({e.batch for e in entries})
        lines.append(f"  {night}: {len(entries)} chunks, batch {', '.join(batches)}; "
                     + ", ".join(f"{ds} {n}" for ds, n in rows.items()))
    lines += update_lines(current)
    files = pixel_files(cat, pixels[:1])
    if files:
        example = int(pq.read_table(files[0][1], columns=["diaObjectId"])["diaObjectId"][0].as_py())
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # lsdb prints "Searching for ..."
            search = lsdb.open_catalog(collection).id_search(values={"diaObjectId": example})
        found = search.compute(progress_bar=False)
        seconds = time.perf_counter() - started
        lines.append(f"example: id_search(diaObjectId={example}) found {len(found)} row(s) in {seconds:.2f} s")
        for _, row in found.iterrows():
            sources = len(row["diaSource"]) if row["diaSource"] is not None else 0
            forced = len(row["diaForcedSource"]) if row["diaForcedSource"] is not None else 0
            lines.append(f"  ra {row['ra']:.6f} dec {row['dec']:.6f}: {sources} sources, {forced} forced sources")
    return lines


def _summary(args: argparse.Namespace) -> int:
    try:
        lines = collection_summary(Path(args.collection), args.catalog)
    except FileNotFoundError as err:
        print(f"ppdb-lc: {err}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def _lightcurve(args: argparse.Namespace) -> int:
    from ppdb_lc.lightcurve_plot import ObjectNotFoundError, plot_lightcurve

    out = Path(args.output or f"lightcurve_{args.object_id}.png")
    try:
        counts = plot_lightcurve(args.collection, args.object_id, out, quantity=args.quantity)
    except (ObjectNotFoundError, FileNotFoundError) as err:
        print(f"ppdb-lc: {err}", file=sys.stderr)
        return 1
    for nested, bands in counts.items():
        text = ", ".join(f"{band} {c['points']} ({c['withdrawn']} withdrawn)" for band, c in bands.items())
        print(f"{nested}: {text or 'no points'}")
    print(f"wrote {out}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from ppdb_lc import catalog, lock
    from ppdb_lc.versions import CollectionStateError, VersionedCollection

    store = VersionedCollection(args.collection)
    try:
        with lock.held(args.collection, "ppdb-lc rollback"):
            before = store.current()
            version = store.rollback(catalog.is_data_file, keep=args.keep)
    except (CollectionStateError, lock.CollectionLockedError) as err:
        print(f"ppdb-lc: {err}", file=sys.stderr)
        return 1
    print(f"rolled back {args.collection}: {before.name if before else '?'} -> {version.name} "
          f"(a copy of the version before it; the next daily ingests again what {before.name if before else '?'} "
          "had)")
    return 0


def _unlock(args: argparse.Namespace) -> int:
    from ppdb_lc import lock

    try:
        holder = lock.clear(args.collection, force=args.force)
    except lock.CollectionLockedError as err:
        print(f"ppdb-lc: {err}", file=sys.stderr)
        return 1
    print(f"cleared the lock of {holder.describe()}" if holder else f"{args.collection} was not locked")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ppdb-lc", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("preview", help="what daily/bootstrap would ingest and where its rows would go")
    p.add_argument("--config", required=True, help="workflow config YAML (config/config.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable; dotted keys for sections)")
    p.add_argument("--json", action="store_true", help="print the preview as JSON")
    p.set_defaults(func=_preview)
    s = sub.add_parser("summary", help="rows, pixels, versions and ledger nights of a published collection")
    s.add_argument("collection", help="collection directory (what users open with lsdb)")
    s.add_argument("--catalog", default=None, help="main catalog name (default: the collection's primary table)")
    s.set_defaults(func=_summary)
    lc = sub.add_parser("lightcurve", help="plot one object's light curves per band (read with lsdb id_search)")
    lc.add_argument("collection", help="collection directory (what users open with lsdb)")
    lc.add_argument("object_id", type=int, metavar="DIAOBJECTID")
    lc.add_argument("-o", "--output", default=None, help="PNG to write (default: lightcurve_<id>.png)")
    lc.add_argument("--quantity", default="psfFlux", choices=["psfFlux", "scienceFlux", "scienceMag"],
                    help="what to draw (default psfFlux: the difference-image flux every point has)")
    lc.set_defaults(func=_lightcurve)
    r = sub.add_parser("rollback", help="publish the version before the published one again, ledger included")
    r.add_argument("collection", help="collection directory")
    r.add_argument("--keep", type=int, default=2, help="published versions to keep (>= 2; default 2)")
    r.set_defaults(func=_rollback)
    u = sub.add_parser("unlock", help="clear the lock left by a run that is gone (e.g. killed on another host)")
    u.add_argument("collection", help="collection directory")
    u.add_argument("--force", action="store_true", help="clear it even if its holder runs on this host")
    u.set_defaults(func=_unlock)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
