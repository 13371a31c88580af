#!/usr/bin/env bash
# Creates or updates the project's virtual environment with the pinned stack.
# Idempotent: every step checks what is installed first, so a second run changes nothing.
# Usage: scripts/setup_env.sh [VENV_DIR]   (default .venv)
# Env: BRIXEL_WHEEL_CACHE  where the once-built mmcv wheel is kept (default ~/.cache/brixel-plugins/wheels)
#      BRIXEL_SKIP_MM=1    skip MMSegmentation/mmcv;  BRIXEL_SKIP_D2=1  skip Detectron2
set -euo pipefail
VENV=${1:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
CACHE=${BRIXEL_WHEEL_CACHE:-$HOME/.cache/brixel-plugins/wheels}
mkdir -p "$CACHE"

TORCH=2.13.0
TORCHVISION=0.28.0
MMCV=2.1.0
D2_WHEEL_PKG=sal-detectron2==0.7.2

log() { printf '[setup] %s\n' "$*"; }
[ -x "$VENV/bin/python" ] || { log "creating $VENV with $PY"; "$PY" -m venv "$VENV"; }
VPY="$VENV/bin/python"
# --isolated: ignore this machine's pip config, whose local folder holds a CPU-only torch
# that breaks torchvision (see ENVIRONMENT.md); the registry's CUDA build runs on CPU too.
PIP=("$VPY" -m pip --isolated --disable-pip-version-check -q)
have() { "$VPY" - "$@" <<'PYEOF'
import sys
from importlib.metadata import version, PackageNotFoundError
for spec in sys.argv[1:]:
    name, _, want = spec.partition("==")
    try:
        got = version(name)
    except PackageNotFoundError:
        sys.exit(1)
    if want and got.split("+")[0] != want:
        sys.exit(1)
PYEOF
}

have "setuptools" && "$VPY" -c "import setuptools,sys; sys.exit(not (77<=int(setuptools.__version__.split('.')[0])<81))" \
  && have wheel ninja || { log "build tools (setuptools<81 for pkg_resources)"; "${PIP[@]}" install "setuptools>=77.0.3,<81" wheel ninja; }

have "torch==$TORCH" "torchvision==$TORCHVISION" || {
  log "torch $TORCH + torchvision $TORCHVISION (registry CUDA build; runs on CPU)";
  "${PIP[@]}" install "torch==$TORCH" "torchvision==$TORCHVISION"; }

if [ "${BRIXEL_SKIP_MM:-0}" != 1 ]; then
  have "mmcv==$MMCV" || {
    whl=$(ls "$CACHE"/mmcv-"$MMCV"-*.whl 2>/dev/null | head -1 || true)
    if [ -z "$whl" ]; then
      log "building mmcv $MMCV from source once (8-12 min on 2 cores); cached in $CACHE"
      MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=${MAX_JOBS:-2} "${PIP[@]}" wheel --no-deps --no-build-isolation \
        -w "$CACHE" "mmcv==$MMCV"
      whl=$(ls "$CACHE"/mmcv-"$MMCV"-*.whl | head -1)
    fi
    log "installing $whl"; "${PIP[@]}" install --no-deps "$whl"; }
fi

if [ "${BRIXEL_SKIP_D2:-0}" != 1 ]; then
  "$VPY" -c "import detectron2" 2>/dev/null || {
    whl=$(ls "$CACHE"/sal_detectron2-*-py3-none-any.whl 2>/dev/null | head -1 || true)
    if [ -z "$whl" ]; then
      log "fetching detectron2 ($D2_WHEEL_PKG, pure-Python parts work on 3.11)"
      # the wheel is tagged cp310-none-any: ask for 3.10 wheels explicitly, then retag it
      tmp=$(mktemp -d); "${PIP[@]}" download --no-deps --only-binary=:all: --python-version 3.10 -d "$tmp" "$D2_WHEEL_PKG"
      src=$(ls "$tmp"/*.whl | head -1); base=$(basename "$src")
      cp "$src" "$CACHE/${base%%-cp310-none-any.whl}-py3-none-any.whl"; rm -rf "$tmp"
      whl=$(ls "$CACHE"/sal_detectron2-*-py3-none-any.whl | head -1)
    fi
    "${PIP[@]}" install --no-deps "$whl"; }
  # pip will complain that sal-detectron2 wants numpy<2: its Python code runs with numpy 2,
  # which opencv 5 (via mmengine) requires; tests/test_environment.py checks the pair works.
  log "note: pip's 'sal-detectron2 requires numpy<2' message below is expected (see setup_env.sh)"
fi

extras=dev
[ "${BRIXEL_SKIP_MM:-0}" = 1 ] || extras="$extras,mmseg"
[ "${BRIXEL_SKIP_D2:-0}" = 1 ] || extras="$extras,d2"
log "installing brixel_plugins (editable) with extras [$extras]"
"${PIP[@]}" install -c constraints.txt -e ".[$extras]"
log "done: $("$VPY" -c 'import torch, timm; print("torch", torch.__version__, "timm", timm.__version__)')"
