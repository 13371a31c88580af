"""Static checks: no undefined names, unused imports or syntax errors (pyflakes rules via ruff)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_pyflakes_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.skip("ruff is in the [dev] extra; make test installs it")
    r = subprocess.run([ruff, "check", "--select", "F,E9", "--no-cache", "brixel_plugins", "tools", "tests", "configs"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
