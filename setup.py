import os
import re
import shutil
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
    "dev": ["pytest>=7", "pytest-timeout", "ruff"],
}

# mmseg's `.mim` habit: the package carries configs/ and tools/ as brixel_plugins/.mim/{configs,tools}, so
# an installed package resolves `brixel_plugins::<path>` (mmengine `_base_`), d2.model_zoo and the `brixel`
# command without a clone. The repository's configs/ and tools/ stay the only copies in git.
MIM_FOLDERS = ("configs", "tools")
MIM_DIR = HERE / "brixel_plugins" / ".mim"


def link_mim_folders() -> None:
    """Editable installs read the source tree: .mim/<folder> links to the top-level folder (git ignores
    .mim), so an edited config is what the installed package sees."""
    MIM_DIR.mkdir(exist_ok=True)
    for name in MIM_FOLDERS:
        target = MIM_DIR / name
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)  # copies left by an older build
        os.symlink(os.path.join("..", "..", name), target)


class BuildWithMim(build_py):
    """Wheels and sdist builds copy configs/ and tools/ into the built package only, never into the
    source tree (where a stale copy would shadow later edits)."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        mim = Path(self.build_lib) / "brixel_plugins" / ".mim"
        for name in MIM_FOLDERS:
            target = mim / name
            if target.is_symlink() or target.is_file():
                target.unlink()
            elif target.exists():
                shutil.rmtree(target)
            shutil.copytree(HERE / name, target, symlinks=False,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


if any(cmd in sys.argv for cmd in ("develop", "editable_wheel")):
    link_mim_folders()

# one subcommand per tool: `brixel train ...` runs tools/train.py as `python tools/train.py ...` would
COMMANDS = ["brixel = brixel_plugins.commands:main"]

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
