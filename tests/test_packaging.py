"""Packaging: declared dependencies match what the code imports, pins agree everywhere, `pip install .` works."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "ppdb_lc"


def normalize(name: str) -> str:
    """PEP 503 name, extras dropped: ``Dask[distributed]`` -> ``dask``."""
    return re.sub(r"[-_.]+", "-", name.split("[")[0]).lower()


def pins(lines: list[str]) -> dict[str, str]:
    """``{name: version}`` of ``name==version`` requirement lines (comments, blanks and self-references skipped)."""
    out: dict[str, str] = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if not line or normalize(line).startswith("ppdb-lc"):
            continue
        name, sep, version = line.partition("==")
        assert sep, f"not pinned: {line!r}"
        assert normalize(name) not in out, f"pinned twice: {line!r}"
        out[normalize(name)] = version.strip()
    return out


def requirements() -> dict[str, str]:
    return pins((REPO / "requirements.txt").read_text().splitlines())


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def imports(path: Path) -> set[str]:
    """Every absolute import of a file (lazy ones inside functions included), as dotted names."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            if node.module == "ppdb_lc":  # from ppdb_lc import jobs
                names |= {f"ppdb_lc.{alias.name}" for alias in node.names}
    return names


def distributions(files: list[Path]) -> set[str]:
    """Distributions providing the third-party modules that ``files`` import."""
    modules = {name.split(".")[0] for path in files for name in imports(path)}
    modules -= set(sys.stdlib_module_names) | {"__future__", "ppdb_lc", "snakemake"}
    providers = importlib.metadata.packages_distributions()
    missing = sorted(m for m in modules if m not in providers)
    assert not missing, f"imported but not installed: {missing}"
    return {normalize(d) for m in modules for d in providers[m]}


def imported_distributions() -> set[str]:
    """What the package needs: the imports of every module of src/ppdb_lc."""
    return distributions(sorted(PACKAGE.rglob("*.py")))


def job_distributions() -> set[str]:
    """What the jobs need: the imports of scripts/*.py and of every ppdb_lc module they reach."""
    todo, seen = sorted((REPO / "scripts").glob("*.py")), set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imports(path):
            if name.startswith("ppdb_lc."):
                module = PACKAGE / f"{name.split('.')[1]}.py"
                todo += [module] if module.exists() else []
    assert PACKAGE / "nightly.py" in seen and PACKAGE / "report.py" in seen and PACKAGE / "cli.py" not in seen
    return distributions(sorted(seen))


def test_runtime_dependencies_are_what_the_package_imports() -> None:
    declared = pins(project()["dependencies"])
    imported = imported_distributions()
    assert imported == set(declared), (f"imported, not declared: {sorted(imported - set(declared))}; "
                                       f"declared, never imported: {sorted(set(declared) - imported)}")
    assert {"pyyaml", "matplotlib", "cdshealpix"} <= imported
    assert "mocpy" not in requirements()  # never imported (hats brings it)


def test_pyproject_pins_equal_requirements() -> None:
    meta = project()
    declared = pins(meta["dependencies"])
    for extra, lines in meta["optional-dependencies"].items():
        for name, version in pins(lines).items():
            assert declared.setdefault(name, version) == version, f"{name} pinned twice differently ({extra})"
    assert declared == requirements()
    assert "ppdb-lc[workflow]" in meta["optional-dependencies"]["test"]
    assert {"snakemake", "snakemake-executor-plugin-slurm", "snakemake-executor-plugin-slurm-jobstep"} <= set(
        pins(meta["optional-dependencies"]["workflow"]))


def test_installed_versions_are_the_pins() -> None:
    """The environment the tests run in is the pinned one (make setup)."""
    wrong = {name: (version, importlib.metadata.version(name)) for name, version in requirements().items()
             if importlib.metadata.version(name) != version}
    assert not wrong, wrong


# conda-forge names that differ from the pip names (matplotlib-base: matplotlib without the Qt GUI)
CONDA_TO_PIP = {"matplotlib-base": "matplotlib", "dask-core": "dask", "pytables": "tables"}


def conda_env() -> tuple[str, dict]:
    text = (REPO / "envs" / "ppdb_lc.yaml").read_text()
    return text, yaml.safe_load(text)


def test_conda_env_is_conda_forge_with_the_requirements_pins() -> None:
    text, env = conda_env()
    assert env["channels"] == ["conda-forge", "nodefaults"]
    specs = env["dependencies"]
    assert all(isinstance(spec, str) for spec in specs), "a pip: section (pip-only syntax, `-e ..`)"
    assert not re.search(r"^\s*-\s*(-e\b|pip\b|pip:)", text, re.MULTILINE)
    assert not any("[" in spec or spec.startswith("-") for spec in specs), specs
    reqs, found = requirements(), {}
    for spec in specs:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*==?\s*([0-9][^\s=<>!,*|]*)", spec)
        assert match, f"not an exact conda pin: {spec!r}"
        name, version = match.groups()
        if name == "python":
            assert version == "3.12"
            continue
        pip_name = CONDA_TO_PIP.get(name, name)
        assert pip_name in reqs, f"{name} is not in requirements.txt"
        assert version == reqs[pip_name], f"{name}={version} but requirements.txt pins {pip_name}=={reqs[pip_name]}"
        found[pip_name] = version
    # exactly what the jobs import: no snakemake or slurm plugins, no test-only packages, nothing missing
    assert set(found) == job_distributions(), (sorted(found), sorted(job_distributions()))


def test_job_scripts_import_the_package_from_this_checkout() -> None:
    """As under --sdm conda: the env has the dependencies but not ppdb_lc, and Snakemake appends only its own
    search path. Each adapter puts <repo>/src first, so its imports work wherever the env file was copied."""
    site = [p for p in sys.path if p.endswith("site-packages")]
    for script in sorted((REPO / "scripts").glob("*.py")):
        code = (
            "import sys, types, runpy\n"
            f"sys.path.extend({site!r})  # without .pth files: no editable install of ppdb_lc\n"
            "try:\n"
            "    import ppdb_lc\n"
            "    raise SystemExit('ppdb_lc importable without the script')\n"
            "except ModuleNotFoundError:\n"
            "    pass\n"
            f"snakemake = types.SimpleNamespace(scriptdir={str(script.parent)!r})\n"
            f"runpy.run_path({str(script)!r}, init_globals={{'snakemake': snakemake}}, run_name='job')\n"
            "import ppdb_lc\n"
            "print(ppdb_lc.__file__)\n"
        )
        proc = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd="/")
        assert proc.returncode == 0, f"{script.name}: {proc.stdout}{proc.stderr}"
        assert proc.stdout.strip() == str(PACKAGE / "__init__.py"), script.name


@pytest.mark.install
def test_pip_install_gives_a_working_package(tmp_path: Path) -> None:
    """`pip install .` (not editable) into a new venv: the CLI runs and every module of the package imports."""
    source = tmp_path / "source"  # a copy, so that the build leaves nothing in the checkout
    source.mkdir()
    shutil.copy2(REPO / "pyproject.toml", source)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                              str(source)], capture_output=True, text=True)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]

    cli = subprocess.run([str(venv / "bin" / "ppdb-lc"), "--help"], capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    assert "usage: ppdb-lc" in cli.stdout and "preview" in cli.stdout and "summary" in cli.stdout

    script = (
        "import importlib, pkgutil, ppdb_lc\n"
        "names = [m.name for m in pkgutil.walk_packages(ppdb_lc.__path__, 'ppdb_lc.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "print(ppdb_lc.__file__)\n"
        "print(' '.join(sorted(names)))\n"
    )
    proc = subprocess.run([str(python), "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    location, names = proc.stdout.splitlines()
    assert location.startswith(str(venv))  # the installed copy, not the checkout
    expected = sorted(f"ppdb_lc.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert names.split() == expected
    # the heavy imports that are deferred inside functions resolve too
    lazy = subprocess.run([str(python), "-c", "import lsdb, matplotlib.pyplot, cdshealpix.nested, yaml"],
                          capture_output=True, text=True)
    assert lazy.returncode == 0, lazy.stderr
    assert not (REPO / "build").exists()
