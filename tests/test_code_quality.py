"""Static checks run by `make test`: ruff (pyflakes, syntax errors, 120-character lines, import order;
ruff.toml) and import-linter (the layering of docs/architecture.md and no import circle; .importlinter)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    path = shutil.which(name) or str(Path(sys.executable).with_name(name))
    if not Path(path).exists():
        if os.environ.get("BRIXEL_REQUIRE_STACK"):
            pytest.fail(f"{name} is missing: it is in the [dev] extra, which make test installs")
        pytest.skip(f"{name} is in the [dev] extra; make test installs it")
    return path


def test_ruff_clean():
    r = subprocess.run([_tool("ruff"), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_import_contracts_kept():
    """The layers contract (a module imports only the layers below its own, every top-level module
    placed), the framework-free core, and no circle between sibling modules anywhere."""
    r = subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout, r.stdout


def test_contracts_catch_the_old_circles(tmp_path):
    """The contracts are not vacuous: put back the two circles the package once had (the upsampler
    registry importing the weight-file module, which imports it back; the neutral export module
    importing an adapter, which imports it back) into a copy, and lint-imports names both."""
    shutil.copytree(ROOT / "brixel_plugins", tmp_path / "brixel_plugins",
                    ignore=shutil.ignore_patterns("__pycache__", ".mim"))
    shutil.copy(ROOT / ".importlinter", tmp_path)
    for module, line in (("upsamplers/base.py", "from ..files import upsampler_file  # noqa: F401"),
                         ("files/export.py", "from ..mmseg import export  # noqa: F401")):
        path = tmp_path / "brixel_plugins" / module
        path.write_text(path.read_text() + "\n" + line + "\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    r = subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert r.returncode != 0, r.stdout
    assert "brixel_plugins.upsamplers.base -> brixel_plugins.files.upsampler_file" in r.stdout, r.stdout
    assert "brixel_plugins.files.export -> brixel_plugins.mmseg.export" in r.stdout, r.stdout
