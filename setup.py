import importlib.util
import re
import sys
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "brixel_plugins" / "version.py").read_text()).group(1)

# Ranges here, exact pins in constraints.txt: a user's GPU machine keeps its own CUDA torch.
CORE = [
    # 2.6: torch.load defaults to weights_only=True. Our own loads pass it explicitly, but mmengine's,
    # fvcore's and detectron2's call torch.load without it; below 2.6 those would unpickle anything.
    "torch>=2.6",
    "torchvision>=0.16",
    "timm>=1.0.20",  # first release with the DINOv3 family
    "safetensors>=0.4",
    "numpy",
    "pillow",
    "scikit-image>=0.22",  # its bundled photos are the demo data
    "mmengine>=0.10.7,<0.11",  # Runner for tools/distill.py; not imported by the core modules
    "tensorboard",  # tools/distill.py's scalar logs
    "matplotlib",  # tools/benchmark.py's plot
]
EXTRAS = {
    "mmseg": [
        "mmcv>=2.0.0rc4,<2.2.0",  # mmsegmentation 1.2.2 refuses mmcv 2.2
        "mmsegmentation==1.2.2",
        "ftfy",  # imported by mmseg, not declared by it
        "regex",
    ],
    # detectron2 itself is not on the registry under its own name: scripts/setup_env.sh
    # installs it (or keeps an existing install); these are what it imports but does not declare.
    "d2": [
        "fvcore", "iopath", "omegaconf>=2.1,<2.4", "hydra-core", "pycocotools", "yacs",
        "termcolor", "tabulate", "cloudpickle", "shapely", "black",
    ],
    "dev": ["pytest>=7", "pytest-timeout", "ruff", "import-linter"],
}

# mmseg's `.mim` habit: the package carries configs/ and tools/ as brixel_plugins/.mim/{configs,tools}, so
# an installed package resolves `brixel_plugins::<path>` (mmengine `_base_`), d2.model_zoo and the `brixel`
# command without a clone. The repository's configs/ and tools/ stay the only copies in git.


def _packaged():
    # brixel_plugins/common/packaged.py imports nothing but the standard library: its fill_mim is the one copy
    spec = importlib.util.spec_from_file_location("_packaged", HERE / "brixel_plugins" / "common" / "packaged.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildWithMim(build_py):
    """Wheels and sdist builds copy configs/ and tools/ into the built package only, never into the
    source tree (where a stale copy would shadow later edits)."""

    def run(self):
        super().run()
        if not getattr(self, "editable_mode", False):
            packaged = _packaged()
            packaged.fill_mim(Path(self.build_lib) / "brixel_plugins" / ".mim", HERE, link=False)
            # site-packages/<name>.pth: brixel_plugins:: resolves in programs that never import us first
            name, line = packaged.STARTUP_PTH
            (Path(self.build_lib) / name).write_text(line)


if any(cmd in sys.argv for cmd in ("develop", "editable_wheel")):
    # editable installs read the source tree: .mim links to the top-level folders (git ignores .mim),
    # so an edited config is what the installed package sees
    _packaged().fill_mim(HERE / "brixel_plugins" / ".mim", HERE, link=True)

# one subcommand per tool: `brixel train ...` runs tools/train.py as `python tools/train.py ...` would
COMMANDS = ["brixel = brixel_plugins.cli.commands:main"]

setup(
    name="brixel-plugins",
    version=VERSION,
    description="Cheap high-resolution dense features from a frozen DINOv3 for MMSegmentation and Detectron2",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["brixel_plugins", "brixel_plugins.*"]),
    cmdclass={"build_py": BuildWithMim},
    entry_points={"console_scripts": COMMANDS},
    install_requires=CORE,
    extras_require=EXTRAS,
    license="Apache-2.0",
)
