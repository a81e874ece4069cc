# Sourced by the other scripts: make .venv at the repo root if absent and install into it.
# Usage: casdap_env [EXTRAS]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

casdap_env() {
    local extras="${1:-}"
    local py="${PYTHON:-python3}"
    if [ ! -x .venv/bin/python ]; then
        echo "[setup] creating .venv with $($py --version)"
        "$py" -m venv .venv
    fi
    local stamp=".venv/.casdap-installed${extras:+-$extras}"
    # Reinstall only when the install inputs changed since the last successful install.
    local want
    want="$(cat setup.py constraints.txt | sha256sum | cut -d' ' -f1)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "[setup] installing casdap${extras:+[$extras]} into .venv: torch's CUDA build from PyPI, about" \
             "6.7 GB; first time about 3 minutes (log: .venv/install.log)"
        local t0=$SECONDS
        if ! { .venv/bin/python -m pip install --disable-pip-version-check --upgrade pip \
               && .venv/bin/python -m pip install --disable-pip-version-check \
                  -c constraints.txt -e ".${extras:+[$extras]}"; } > .venv/install.log 2>&1; then
            tail -n 30 .venv/install.log
            echo "[setup] install failed; the whole pip output is in .venv/install.log" >&2
            exit 1
        fi
        echo "$want" > "$stamp"
        echo "[setup] installed in $((SECONDS - t0)) s ($(du -sh .venv | cut -f1) in .venv)"
    fi
}
