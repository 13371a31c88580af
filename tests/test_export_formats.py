"""Issue 28.1: the framework-neutral model-file module never imports an adapter (it did, lazily, in
``load_exported_model``, and the adapters import it back); each adapter registers its builder at
import, and a file whose adapter was not imported is refused with the import to add."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ADAPTERS = ("mmseg", "d2")


def imported_modules(source: str, package: str) -> set:
    """Every module ``source`` (a module of ``package``) imports, at top level or inside functions,
    as absolute names."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            names.add(module)
            names.update(f"{module}.{a.name}" for a in node.names)
    return names


def test_the_model_file_module_imports_no_adapter():
    for path in sorted((ROOT / "brixel_plugins" / "files").glob("*.py")):
        adapters = sorted(m for m in imported_modules(path.read_text(), "brixel_plugins.files")
                          if any(m == f"brixel_plugins.{a}" or m.startswith(f"brixel_plugins.{a}.") for a in ADAPTERS))
        assert not adapters, f"{path.relative_to(ROOT)} imports {adapters}"


def test_the_check_finds_an_adapter_import_inside_a_function():
    """The walk above sees the lazy import the old load_exported_model held."""
    old = "def load(path):\n    if path:\n        from ..d2.export import build_exported\n    return build_exported\n"
    assert "brixel_plugins.d2.export" in imported_modules(old, "brixel_plugins.files")


def write_fake(path: Path, framework: str) -> Path:
    from brixel_plugins.files.export import write_model_file

    return write_model_file(path, {"head.weight": torch.zeros(2)},
                            {"framework": framework, "config": {}, "dinov3": {"weights": None}})


def test_a_file_of_an_adapter_not_imported_names_the_import(tmp_path):
    frameworks = {"mmseg": "brixel_plugins.mmseg", "detectron2": "brixel_plugins.d2"}
    paths = [str(write_fake(tmp_path / f"{f}.safetensors", f)) for f in frameworks]
    code = ("import sys\nfrom brixel_plugins.files.export import load_exported_model\n"
            "for path in sys.argv[1:]:\n    try:\n        load_exported_model(path)\n"
            "    except Exception as e:\n        print(type(e).__name__, e)\n"
            "print(sorted(m for m in sys.modules if m.startswith(('brixel_plugins.mmseg', 'brixel_plugins.d2'))))\n")
    r = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    *errors, loaded = r.stdout.strip().splitlines()
    assert len(errors) == 2, r.stdout
    for error, (framework, module) in zip(errors, frameworks.items()):
        assert error.startswith("WeightFileError ") and f"is a {framework} model file" in error, error
        assert f"import {module} first" in error, error
    assert loaded == "[]"  # nothing imported an adapter on the way


def test_an_unknown_framework_is_refused(tmp_path):
    from brixel_plugins.backbones.weights import WeightFileError
    from brixel_plugins.files.export import load_exported_model

    with pytest.raises(WeightFileError, match=r"unknown framework 'keras'"):
        load_exported_model(write_fake(tmp_path / "model.safetensors", "keras"))


def test_importing_an_adapter_registers_its_builder():
    pytest.importorskip("mmseg")
    pytest.importorskip("detectron2")
    import brixel_plugins.d2
    import brixel_plugins.mmseg
    from brixel_plugins.files import export

    assert export._BUILDERS["mmseg"] is brixel_plugins.mmseg.export.build_exported
    assert export._BUILDERS["detectron2"] is brixel_plugins.d2.export.build_exported
    export.register_model_format("mmseg", brixel_plugins.mmseg.export.build_exported)  # importing again: the same
    with pytest.raises(ValueError, match="already have a builder: brixel_plugins.mmseg.export.build_exported"):
        export.register_model_format("mmseg", brixel_plugins.d2.export.build_exported)
