#!/usr/bin/env bash
# Create (or update) the project virtual environment in .venv without pulling CUDA wheels.
#   bash scripts/setup_env.sh          runtime: bundles, converters, MONAI Label server
#   bash scripts/setup_env.sh --dev    plus pytest and ruff
# Set VENV=/path to use another location; PYTHON=python3.11 to pick the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
# pip warns once per package about this machine's optional local index folders; keep real errors visible
pip_install() {
  "${PIP[@]}" "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  return "${PIPESTATUS[0]}"
}
stamp="$VENV/.requirements.sha256"
hash="$(cat requirements.txt requirements-nodeps.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)"
want="$hash ${1:-runtime}"
have="$(cat "$stamp" 2>/dev/null || true)"
if [ "$have" = "$want" ] || [ "$have" = "$hash --dev" ]; then  # a --dev install covers the runtime
  echo "[setup_env] $VENV is up to date"
  exit 0
fi
echo "[setup_env] installing requirements into $VENV (a few minutes on a new machine)"
# torch first, pinned, so nothing later resolves a newer (CUDA) build.
pip_install "$(grep -E '^torch==' requirements.txt)"
pip_install -r requirements.txt
pip_install --no-deps -r requirements-nodeps.txt
if [ "${1:-}" = "--dev" ]; then
  pip_install -r requirements-dev.txt
fi
"$VENV/bin/python" -c "import torch, monai, monailabel, onnxruntime, openvino; print('[setup_env] torch', torch.__version__, '| monai', monai.__version__, '| monailabel', monailabel.__version__, '| onnxruntime', onnxruntime.__version__, '| openvino', openvino.__version__)"
echo "$want" > "$stamp"
