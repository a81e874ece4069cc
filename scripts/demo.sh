#!/usr/bin/env bash
# Create .venv if absent, install casdap, run the demo on the embedded data set.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
casdap_env
.venv/bin/casdap demo "$@"
