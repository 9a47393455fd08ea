#!/usr/bin/env bash
# Set up the environment (with test tools) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh --dev
.venv/bin/python -m pytest "$@"
