"""The import contracts of pyproject.toml ([tool.importlinter]) hold, and they do catch a violation.

Layers import downward only: features <- training <- serving <- pipelines. `lint-imports` (import-linter)
reads the whole import graph, function-level imports included, so an upward import anywhere fails here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path, *args: str) -> subprocess.CompletedProcess:
    """`lint-imports` with the repository's contracts on the packages under ``root`` (found through
    PYTHONPATH, not an installed copy)."""
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} is missing: install the dev extra (import-linter)")
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--config", str(REPO / "pyproject.toml"), *args],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert any(c["type"] == "layers" for c in contracts)
    for contract in contracts:
        assert f"{contract['name']} KEPT" in result.stdout, result.stdout


def test_layers_contract_catches_an_upward_import(tmp_path):
    """The same contracts on four tiny packages where features imports pipelines: the contract breaks."""
    for package in ("features", "training", "serving", "pipelines"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "pipelines" / "cli.py").write_text("VALUE = 1\n")
    (tmp_path / "features" / "dates.py").write_text("def f():\n    from pipelines.cli import VALUE\n    return VALUE\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "features is not allowed to import pipelines" in result.stdout, result.stdout
    assert "features.dates -> pipelines.cli" in result.stdout


def test_cli_imports_no_library_before_a_command_runs():
    """`crmml --help` stays fast: the command modules import pandas, MLflow and crmml's own layers inside the
    commands, so loading the CLI loads only typer, rich, the command modules and ``pipelines.quiet`` (standard
    library only: it must run before any library is imported)."""
    heavy = ["pandas", "numpy", "pyarrow", "scipy", "sklearn", "lightgbm", "implicit", "mlflow", "bentoml", "pandera",
             "duckdb", "ibis", "matplotlib", "features", "training", "serving", "pipelines"]
    code = "import sys, pipelines.cli; print(*sorted(m for m in sys.modules if m.split('.')[0] in sys.argv[1:]))"
    result = subprocess.run([sys.executable, "-c", code, *heavy], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    loaded = set(result.stdout.split())
    assert {m for m in loaded if not (m in ("pipelines", "pipelines.cli", "pipelines.quiet") or m.startswith("pipelines.commands"))} == set()
