"""The packages form layers (pyproject's import-linter contract): none imports a package above it."""

from pathlib import Path

from importlinter.cli import lint_imports

PYPROJECT = Path(__file__).parents[1] / "pyproject.toml"


def test_no_package_imports_one_above_it(capsys):
    assert lint_imports(config_filename=str(PYPROJECT), no_cache=True, no_logo=True) == 0, capsys.readouterr().out
