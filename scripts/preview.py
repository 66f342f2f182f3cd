"""Snakemake adapter: print what daily/bootstrap would do (pixels included) and keep a copy as text."""

from pathlib import Path

from ppdb_lc.preview import format_preview, preview
from ppdb_lc.settings import Settings

if __name__ == "__main__":
    text = format_preview(preview(Settings.from_config(snakemake.config)))  # noqa: F821
    print(text, flush=True)
    out = Path(snakemake.log[0])  # noqa: F821
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
