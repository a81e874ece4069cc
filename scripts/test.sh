#!/usr/bin/env bash
# Create .venv if absent, install casdap with the test extras, run the whole test suite.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
casdap_env test
.venv/bin/python -m ruff check .
# -rs: each skip with its reason (the CUDA tests without a GPU); -n auto: one worker a core, each test
# file whole on one worker (its module fixtures made once), the longest files first (tests/conftest.py,
# LONGEST_FIRST; --no-loadscope-reorder keeps that order); `-n 0` runs in this one process
.venv/bin/python -m pytest -q -rs -n auto --dist loadfile --no-loadscope-reorder "$@"
