"""Every class (or builder) the package registers in a framework's registry is exported by the
``__init__`` of the package its module lives in, so ``from brixel_plugins.<package> import Name``
finds what a config names (issue 28: ``SkippedImagesHook`` and ``WarmupClipOptimWrapper`` were
registered, not exported)."""
from __future__ import annotations

import importlib
import sys

import pytest

mmseg = pytest.importorskip("mmseg")


def mmengine_entries():
    """(registry, name, object) of every mmengine registry: the roots and all their children
    (mmseg's, mmcv's, ``brixel_plugins``' scope)."""
    from mmengine import registry as roots
    from mmengine.registry import Registry

    seen, todo = set(), [r for r in vars(roots).values() if isinstance(r, Registry)]
    while todo:
        registry = todo.pop()
        if id(registry) in seen:
            continue
        seen.add(id(registry))
        yield from ((f"{registry.scope}.{registry.name}", k, v) for k, v in registry.module_dict.items())
        todo.extend(registry.children.values())


def detectron2_entries():
    """(registry, name, object) of every fvcore registry a loaded module holds (detectron2's)."""
    from fvcore.common.registry import Registry

    seen = set()
    for module in list(sys.modules.values()):
        for value in list(vars(module).values()) if module is not None else ():
            if isinstance(value, Registry) and id(value) not in seen:
                seen.add(id(value))
                yield from ((f"detectron2.{value._name}", k, v) for k, v in value)


def ours(entries):
    return [(r, k, v) for r, k, v in entries if (getattr(v, "__module__", None) or "").startswith("brixel_plugins.")]


def test_every_registered_class_is_exported_by_its_package():
    pytest.importorskip("detectron2")
    for package in ("engine", "mmseg", "d2", "distill"):  # importing each registers its parts
        importlib.import_module(f"brixel_plugins.{package}")
    entries = ours(mmengine_entries()) + ours(detectron2_entries())
    registries = {r.split(".", 1)[1] for r, _, _ in entries}
    # the walk reaches every kind the package registers in: a registry it missed would pass unseen
    assert {"model", "hook", "transform", "runner", "loop", "optim_wrapper", "optimizer wrapper constructor",
            "model_wrapper", "dataset", "data sampler", "metric", "log_processor", "BACKBONE"} <= registries, registries
    assert {"mmseg", "d2", "engine", "distill"} <= {v.__module__.split(".")[1] for _, _, v in entries}
    missing = []
    for registry, name, obj in entries:
        package = obj.__module__.rsplit(".", 1)[0]
        if getattr(importlib.import_module(package), obj.__name__, None) is not obj:
            missing.append(f"{registry} {name}: {obj.__module__}.{obj.__name__} is not exported by {package}")
    assert not missing, "\n".join(missing)


def test_the_walk_sees_a_class_registered_and_not_exported():
    """A class registered in a child registry (as distill's are) and left out of its package's
    ``__init__`` is reported: the check above can fail."""
    from brixel_plugins.distill.registry import HOOKS

    class UnexportedHook:
        pass

    UnexportedHook.__module__ = "brixel_plugins.distill.hooks"
    HOOKS.register_module(module=UnexportedHook)
    try:
        found = [(r, k) for r, k, v in ours(mmengine_entries()) if v is UnexportedHook]
        assert found == [("brixel_plugins.hook", "UnexportedHook")]
        import brixel_plugins.distill as package

        assert getattr(package, "UnexportedHook", None) is None
    finally:
        HOOKS.module_dict.pop("UnexportedHook")
