"""The configs and tools that ship inside the package, the way MMSegmentation ships its own.

``setup.py`` puts the repository's ``configs/`` and ``tools/`` into ``brixel_plugins/.mim/`` (copies in
a wheel, links to the top-level folders in an editable install), so an installed package has what a
clone has. A packaged config is named ``brixel_plugins::<path under configs/>``, mmengine's syntax for
a package's config (``mmseg::_base_/default_runtime.py``), e.g.
``brixel_plugins::mmseg/linear/linear_dinov3-vits16-bilinear_1xb8-60it_toy-shapes-128x128.py``.

Imported from a source checkout (``PYTHONPATH=.``, or an editable install), the checkout's own
``configs/`` and ``tools/`` are used: they are the originals.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import Optional

PACKAGE = "brixel_plugins"
PREFIX = PACKAGE + "::"
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # brixel_plugins/, above common/
MIM_DIR = PACKAGE_DIR / ".mim"
FOLDERS = ("configs", "tools")
# mmengine reads .mim/model-index.yml (the metafiles of published models) before it falls back to
# .mim/configs/<path>; there are no published models, so the index is empty
MODEL_INDEX = "Import: []\n"


def fill_mim(mim: Path, source: Path, link: bool) -> None:
    """Make ``mim`` hold ``source``'s configs/ and tools/: links (an editable install, whose package is
    the source tree) or copies (a built package), and the model index mmengine reads."""
    mim.mkdir(parents=True, exist_ok=True)
    for name in FOLDERS:
        target = mim / name
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        if link:
            os.symlink(os.path.relpath(source / name, mim), target)
        else:
            shutil.copytree(source / name, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (mim / "model-index.yml").write_text(MODEL_INDEX)


def checkout_root() -> Optional[Path]:
    """The source checkout this package is imported from, or None for an installed package."""
    root = PACKAGE_DIR.parent
    if (root / "setup.py").is_file() and all((root / f).is_dir() for f in FOLDERS):
        return root
    return None


def folder(kind: str) -> Path:
    """Where this installation keeps ``configs`` or ``tools``."""
    if kind not in FOLDERS:
        raise ValueError(f"unknown packaged folder {kind!r}; expected one of {', '.join(FOLDERS)}")
    root = checkout_root()
    if root is not None:
        return root / kind
    if (MIM_DIR / kind).is_dir():
        return MIM_DIR / kind
    raise FileNotFoundError(
        f"this installation of brixel_plugins ({PACKAGE_DIR}) carries no {kind}: {MIM_DIR / kind} is missing and "
        f"it is not a source checkout. Install it from a wheel or the repository (pip install .), which adds them.")


def _relative(name: str, kind: str) -> str:
    rel = name[len(PREFIX):] if name.startswith(PREFIX) else name
    if not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise ValueError(f"{name!r}: expected a path under the packaged {kind}/ folder, e.g. "
                         f"{PREFIX}mmseg/linear/<config>.py")
    return rel


def config_file(name: str) -> str:
    """The file of a packaged config: ``brixel_plugins::mmseg/linear/x.py`` or ``mmseg/linear/x.py``."""
    base = folder("configs")
    path = base / _relative(name, "configs")
    if not path.is_file():
        near = sorted(p.name for p in path.parent.glob("*.py")) if path.parent.is_dir() else []
        hint = f"; {path.parent} holds: {', '.join(near)}" if near else f"; the packaged configs are under {base}"
        raise FileNotFoundError(f"no packaged config {name!r} ({path} does not exist){hint}")
    return str(path)


def tool_file(name: str) -> str:
    """The file of a tool script, e.g. ``train.py``."""
    path = folder("tools") / _relative(name, "tools")
    if not path.is_file():
        raise FileNotFoundError(f"no tool {name!r} in this installation ({path} does not exist)")
    return str(path)


def resolve_config_name(text: str) -> str:
    """``text`` with a ``brixel_plugins::`` config name replaced by its file; anything else unchanged."""
    return config_file(text) if text.startswith(PREFIX) else text


def _register(config_utils) -> None:
    # a module directly in the package rather than the distribution's name: mmengine then takes the
    # folder of that module, the package Python imports (a wheel, an editable install or PYTHONPATH
    # alike); from the distribution it would guess site-packages/brixel_plugins, which an editable
    # install lacks. Not this module: it sits in common/, one folder too deep.
    config_utils.MODULE2PACKAGE.setdefault(PACKAGE, PACKAGE + ".version")


def register_with_mmengine() -> None:
    """Let mmengine resolve ``_base_ = ['brixel_plugins::<path>']``: it accepts ``pkg::`` only for the
    packages of its table (OpenMMLab's), then reads ``<package folder>/.mim/configs/<path>``."""
    from mmengine.config import utils

    _register(utils)
    root = checkout_root()
    if root is not None and not (MIM_DIR / "model-index.yml").is_file():
        try:
            fill_mim(MIM_DIR, root, link=True)  # a clone used through PYTHONPATH: the editable install's links
        except OSError:
            pass  # a read-only clone: mmengine's own error then names the missing .mim path


# An installed wheel also puts this line into site-packages (setup.py), so a program that never imports
# brixel_plugins before reading a config (mmseg's stock tools/train.py) resolves brixel_plugins:: too.
STARTUP_PTH = ("brixel_plugins_mmengine.pth",
               "import brixel_plugins.common.packaged as _brixel; _brixel.register_when_mmengine_loads()\n")
_WATCHED = "mmengine.config.utils"


class _RegisterOnImport:
    """A meta-path finder that lets ``mmengine.config.utils`` load as usual, then registers with it;
    nothing of mmengine is imported before a program asks for it."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _WATCHED:
            return None
        sys.meta_path.remove(self)  # once; the search below must not find this finder again
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                _register(module)

            spec.loader.exec_module = exec_module
        return spec


def register_when_mmengine_loads() -> None:
    """Register with mmengine now if it is loaded, else as soon as it is (at interpreter start-up, from
    the ``.pth`` line above: cheap, mmengine is not imported)."""
    if _WATCHED in sys.modules:
        _register(sys.modules[_WATCHED])
    elif not any(isinstance(f, _RegisterOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnImport())
