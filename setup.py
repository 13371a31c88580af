import re
from pathlib import Path

from setuptools import find_packages, setup

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

setup(
    name="brixel-plugins",
    version=VERSION,
    description="Cheap high-resolution dense features from a frozen DINOv3 for MMSegmentation and Detectron2",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["brixel_plugins", "brixel_plugins.*"]),
    install_requires=CORE,
    extras_require=EXTRAS,
    license="Apache-2.0",
)
