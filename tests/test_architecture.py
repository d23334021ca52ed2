"""House rules that keep the code easy to change: import layers (import-linter) and no print in library code."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hiertree"


def test_import_layers_and_no_cycles():
    """pyproject.toml's import-linter contracts (function-level imports count) hold for the package as it is.

    In a subprocess: import-linter configures logging with dictConfig, which would silence loggers that
    other tests of this session already created.
    """
    pytest.importorskip("importlinter", reason="import-linter is in the test extra")
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(ROOT / 'pyproject.toml')!r}, no_cache=True, no_logo=True))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def _prints_outside_entry_points(path: Path) -> list[int]:
    """Line numbers of print() calls not inside a function named main / *_main."""
    found: list[int] = []

    def visit(node: ast.AST, in_main: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_main or (isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and child.name.endswith("main"))
            if isinstance(child, ast.Call) and isinstance(child.func, ast.Name) and child.func.id == "print" and not inside:
                found.append(child.lineno)
            visit(child, inside)

    visit(ast.parse(path.read_text(), str(path)), False)
    return found


def test_library_code_logs_instead_of_printing():
    """Only command-line entry points print; everything else goes through logging (routable, silenceable)."""
    stray = {str(p.relative_to(ROOT)): lines for p in sorted(PACKAGE.rglob("*.py"))
             if p.relative_to(PACKAGE).parts[0] != "cli" for lines in [_prints_outside_entry_points(p)] if lines}
    assert stray == {}


def test_the_checker_sees_a_stray_print(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def helper():\n    print('x')\n\ndef main():\n    print('ok')\n")
    assert _prints_outside_entry_points(bad) == [2]


def _layout_block() -> str:
    """The code block under the README's ``## Layout`` heading."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("\n## Layout"):]
    return section[section.index("```") + 3:section.index("```", section.index("```") + 3)]


def test_readme_layout_names_every_subpackage_and_top_module():
    """The README's layout is the package as it is: every subpackage and top-level module named, nothing named
    that is not there, and at most 8 modules at the top besides __init__.py (the layers are folders)."""
    block = _layout_block()
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    modules = {p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    named = {w.rstrip("/") for line in block.splitlines()[1:] if line.startswith("  ") for w in line.split()[:6]
             if w.endswith("/") or w.endswith(".py")}
    assert folders | modules <= named, f"missing from the README layout: {sorted(folders | modules - named)}"
    assert named <= folders | modules, f"named but absent: {sorted(named - folders - modules)}"
    assert len(modules) <= 8
    top = {line.split()[0] for line in block.splitlines() if line and not line.startswith(" ")}
    assert {t.rstrip("/") for t in top if t.endswith("/")} <= {p.name for p in ROOT.iterdir() if p.is_dir()}


def test_architecture_doc_draws_the_contracts_layer_order():
    """The layer order lives in pyproject's first contract; docs/architecture.md's drawing must say the same."""
    import tomllib

    contract = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("From the top down:", 1)[1].split("```", 2)[1]
    drawn = [" | ".join(part.strip() for part in re.split(r"\s{2,}", line.strip())[0].split("|"))
             for line in block.strip().splitlines()]
    assert drawn == [" | ".join(p.strip() for p in layer.split("|")) for layer in contract["layers"]]


UPWARD = ("inference", "training", "evaluation", "cli")


def _hiertree_imports(path: Path) -> list[tuple[int, str]]:
    """Every ``hiertree.*`` module a file imports, anywhere in it (inside functions too), with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("hiertree.")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hiertree.") and not node.level:
            found.append((node.lineno, node.module))
    return found


def test_tree_data_and_models_never_import_the_layers_above():
    """models/ is the network: it, data/ and tree/ import nothing of inference, training, evaluation or cli (an AST
    scan, so an import inside a function counts); HierSegModel.predict reaches inference through a registry."""
    upward = {f"{p.relative_to(ROOT)}:{line}": name for part in ("tree", "data", "models")
              for p in sorted((PACKAGE / part).rglob("*.py")) for line, name in _hiertree_imports(p)
              if name.split(".")[1] in UPWARD}
    assert upward == {}


def test_the_upward_import_scan_sees_an_import_inside_a_function(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n\ndef f():\n    from hiertree.inference.predictor import Views\n")
    assert _hiertree_imports(bad) == [(4, "hiertree.inference.predictor")]
