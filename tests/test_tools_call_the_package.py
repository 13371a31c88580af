"""Issue 28.3: every ``tools/*.py`` parses arguments and calls the package, and ends a failure one
way, through :func:`brixel_plugins.cli.errors.run_tool` (one ``error:`` line, exit status 1). There
were three: ``run_tool``, ``sys.exit("error: ...")`` / ``raise SystemExit("error: ...")`` (with
``exit_on_explained_errors``), and ``print("error: ..."); return 2`` (benchmark, visualize)."""
from __future__ import annotations

import ast
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = sorted((ROOT / "tools").glob("*.py"))
DEMO_TOOLS = ("demo.py", "demo_seg.py", "demo_det.py")  # moved into the package by their own change


def exit_styles(source: str) -> list:
    """The ways ``source`` ends on an error other than raising: ``sys.exit`` / ``SystemExit`` with a
    message, an ``error:`` printed, a non-zero status returned, ``exit_on_explained_errors``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            text = ast.unparse(node.args[0]) if node.args else ""
            if name in ("sys.exit", "SystemExit", "exit") and node.args and not text.isdigit():
                found.append(f"line {node.lineno}: {name}({text[:40]})")
            if name == "print" and "error:" in text:
                found.append(f"line {node.lineno}: print({text[:40]})")
            if "exit_on_explained_errors" in name:
                found.append(f"line {node.lineno}: {name}")
        if isinstance(node, ast.Return) and isinstance(node.value, ast.Constant) and node.value.value not in (0, None):
            found.append(f"line {node.lineno}: return {node.value.value}")
    return found


def test_the_check_finds_each_old_style():
    old = ('import sys\ndef main(argv):\n    try:\n        run()\n    except KeyError as e:\n'
           '        print(f"error: {e}", file=sys.stderr)\n        return 2\n    sys.exit(f"error: {x}")\n'
           '    with exit_on_explained_errors():\n        pass\n    raise SystemExit("error: no")\n')
    assert len(exit_styles(old)) == 5, exit_styles(old)
    assert exit_styles("import sys\ndef main(argv):\n    sys.exit(1)\n    return 0\n") == []


@pytest.mark.parametrize("path", [p for p in TOOLS if p.name not in DEMO_TOOLS], ids=lambda p: p.name)
def test_a_tool_ends_a_failure_only_through_run_tool(path):
    source = path.read_text()
    assert not exit_styles(source), f"{path.name}: {exit_styles(source)}"


@pytest.mark.parametrize("path", TOOLS, ids=lambda p: p.name)
def test_every_tool_runs_through_run_tool(path):
    main_block = [n for n in ast.parse(path.read_text()).body
                  if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
    assert main_block and ast.unparse(main_block[0].body[-1]).startswith("run_tool("), path.name


def test_an_unknown_method_ends_in_one_error_line_and_status_1(tool_error):
    """tools/visualize.py printed ``error: ...`` itself and returned 2 (so did tools/benchmark.py)."""
    main = runpy.run_path(str(ROOT / "tools" / "visualize.py"), run_name="tool_under_test")["main"]
    line = tool_error(main, ["--methods", "no_such_method", "--size", "16", "--hr-size", "32", "--cell", "16",
                             "--backbone-overrides", "depth=1,embed_dim=64,num_heads=2"])
    assert "no_such_method" in line and not line.startswith("error: '"), line  # a KeyError's text, unquoted
