"""Snakemake adapter: print what daily/bootstrap would do (pixels included) and keep a copy as text."""

import sys
from pathlib import Path

# ppdb_lc from this checkout, whatever the job's environment (venv, or a conda env built from envs/ppdb_lc.yaml)
sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from ppdb_lc.preview import format_preview, preview  # noqa: E402
from ppdb_lc.settings import Settings  # noqa: E402

if __name__ == "__main__":
    text = format_preview(preview(Settings.from_config(snakemake.config)))  # noqa: F821
    print(text, flush=True)
    out = Path(snakemake.log[0])  # noqa: F821
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
