#!/usr/bin/env bash
# Create .venv if absent, install casdap with the test extras, run the whole test suite.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
casdap_env test
.venv/bin/python -m ruff check .
.venv/bin/python -m pytest -q -rs "$@"  # -rs: each skip with its reason (the CUDA tests without a GPU)
