#!/usr/bin/env bash
# Rewrite every stored reference result (tests/reference/*.json) from this checkout's code: the tests
# marked `reference` run in one process and write what they compute instead of comparing with it.
# Only when a change moves the numbers on purpose; the commit that carries the new files says why.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
casdap_env test
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" .venv/bin/python -m pytest -q -p no:cacheprovider -n 0 -m reference \
    --update-references tests "$@"
git status --short tests/reference
