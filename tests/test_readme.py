"""The README's python examples, run against a collection built from the demo config (first night, as `make demo`
bootstraps it): every ``.compute()`` in them returns rows."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO, Workspace

pytestmark = pytest.mark.workflow
DEMO_COLLECTION = "demo/dia_object_collection"


def python_examples(readme: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", readme.read_text(), flags=re.MULTILINE | re.DOTALL)


def is_compute(node: ast.stmt) -> bool:
    return (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Attribute) and node.value.func.attr == "compute")


def run_example(source: str, collection: Path) -> list[tuple[str, int]]:
    """Run an example statement by statement; return (expression, rows) of each ``.compute()`` statement."""
    assert DEMO_COLLECTION in source
    tree = ast.parse(source.replace(DEMO_COLLECTION, str(collection)))
    namespace: dict = {}
    results = []
    for node in tree.body:
        if is_compute(node):
            value = eval(compile(ast.Expression(node.value), "README.md", "eval"), namespace)  # noqa: S307
            results.append((ast.unparse(node.value), len(value)))
        else:
            exec(compile(ast.Module([node], type_ignores=[]), "README.md", "exec"), namespace)  # noqa: S102
    return results


@pytest.fixture(scope="module")
def demo_collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo export of config/config.yaml (same objects and ids as `make demo`), bootstrapped from its first
    night like `make demo` does before its dailies."""
    ws = Workspace(tmp_path_factory.mktemp("readme"))
    demo = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    ws.write_config(catalog=demo["catalog"])
    ws.snakemake("demo")
    ws.snakemake("bootstrap", "--config", f"until={demo['demo']['start']}")
    return ws.collection


def test_readme_examples_return_rows(demo_collection: Path) -> None:
    examples = python_examples(REPO / "README.md")
    assert examples, "no python example in the README"
    computed = [result for source in examples for result in run_example(source, demo_collection)]
    assert len(computed) >= 2, computed
    empty = [expression for expression, rows in computed if rows == 0]
    assert not empty, f"README examples returning no rows: {empty}"
