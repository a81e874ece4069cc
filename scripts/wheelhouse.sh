#!/usr/bin/env bash
# Build a wheel folder for an offline install of casdap onto a machine that already has CUDA
# PyTorch (torch + torchvision), such as a GPU node without network access.
#
#   bash scripts/wheelhouse.sh DIR [--python X.Y] [--glibc X.Y] [--arch ARCH] [--platform TAG]...
#                                  [--have FILE] [--extras NAMES] [--add REQ]...
#
# Run it where the package registry is reachable. It
#   1. builds the casdap wheel from this checkout (the working tree as it is),
#   2. resolves casdap's dependencies with pip for the target Python and platform (metadata only),
#   3. keeps what casdap needs beyond torch/torchvision: it never follows torch or torchvision, and
#      stops at every package named in --have (the target already holds it), and does not follow
#      optional extras of dependencies (avalanche-lib asks for every qpsolvers back-end; casdap uses none),
#   4. downloads exactly those wheels (pure-Python packages published only as sources, like GPUtil,
#      are built into wheels here), and copies the target-side installer in as DIR/install.py.
#
# On the target, with no network (pip --no-index --no-deps: torch/torchvision are never touched):
#   python3 DIR/install.py --venv ~/casdap-env     # venv with --system-site-packages, sees the node's torch
#   python3 DIR/install.py                         # or straight into python3's own environment
#
# Options:
#   --python X.Y    target Python (default: this machine's python3)
#   --glibc X.Y     newest manylinux glibc the target has (default: this machine's); with --arch
#   --arch ARCH     target machine (default: this machine's, e.g. x86_64)
#   --platform TAG  explicit platform tag(s) instead of the manylinux set from --glibc/--arch
#   --have FILE     packages the target already holds: names, or `pip freeze` / `pip list` output.
#                   benchmarks/gpu_node_packages.txt lists the GPU machine this project is measured on.
#   --extras NAMES  casdap extras to include, e.g. export (onnx, onnxscript, onnxruntime)
#   --add REQ       a further requirement to include (e.g. --add pytest for a node without it)
#   --casdap-wheel FILE  ship this casdap wheel (built from the same tree) instead of building one
# Environment: PYTHON (the interpreter whose pip resolves and downloads; default python3).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

DIR="" TARGET_PY="" GLIBC="" ARCH="" HAVE="" EXTRAS="" GIVEN_WHEEL=""
PLATFORMS=() ADDS=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --python) TARGET_PY="$2"; shift 2 ;;
        --glibc) GLIBC="$2"; shift 2 ;;
        --arch) ARCH="$2"; shift 2 ;;
        --platform) PLATFORMS+=("$2"); shift 2 ;;
        --have) HAVE="$2"; shift 2 ;;
        --extras) EXTRAS="$2"; shift 2 ;;
        --add) ADDS+=("$2"); shift 2 ;;
        --casdap-wheel) GIVEN_WHEEL="$2"; shift 2 ;;
        -*) echo "wheelhouse.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
        *) if [ -n "$DIR" ]; then echo "wheelhouse.sh: one DIR only (got '$DIR' and '$1')" >&2; exit 2; fi
           DIR="$1"; shift ;;
    esac
done
if [ -z "$DIR" ]; then echo "usage: bash scripts/wheelhouse.sh DIR [options] (see --help)" >&2; exit 2; fi
if [ -n "$HAVE" ] && [ ! -f "$HAVE" ]; then echo "wheelhouse.sh: --have file '$HAVE' does not exist" >&2; exit 2; fi
if [ -n "$GIVEN_WHEEL" ] && [[ ! -f "$GIVEN_WHEEL" || "$(basename "$GIVEN_WHEEL")" != casdap-*.whl ]]; then
    echo "wheelhouse.sh: --casdap-wheel '$GIVEN_WHEEL' is not a casdap-*.whl file" >&2; exit 2
fi
[ -n "$TARGET_PY" ] || TARGET_PY="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[ -n "$ARCH" ] || ARCH="$(uname -m)"
if [ -z "$GLIBC" ]; then
    GLIBC="$("$PY" -c 'import platform; v = platform.libc_ver()[1]; print(v or "2.17")')"
fi
if [ ${#PLATFORMS[@]} -eq 0 ]; then
    minor="${GLIBC#*.}"
    PLATFORMS=("manylinux2014_$ARCH")
    [ "$ARCH" = x86_64 ] && PLATFORMS+=("manylinux1_$ARCH" "manylinux2010_$ARCH")
    for n in $(seq 5 "$minor"); do PLATFORMS+=("manylinux_2_${n}_$ARCH"); done
fi
PLAT_ARGS=()
for p in "${PLATFORMS[@]}"; do PLAT_ARGS+=(--platform "$p"); done

mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
if [ -n "$(ls -A "$DIR")" ]; then
    if [ ! -f "$DIR/wheelhouse.json" ]; then
        echo "wheelhouse.sh: '$DIR' is not empty and is not a wheel folder made by this script; use an empty one" >&2
        exit 2
    fi
    rm -f "$DIR"/*.whl "$DIR/wheelhouse.json" "$DIR/requirements.txt" "$DIR/install.py"
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
PIP=("$PY" -m pip --disable-pip-version-check)
t0=$SECONDS
echo "[wheelhouse] target: Python $TARGET_PY, ${PLATFORMS[0]} .. ${PLATFORMS[-1]} (${#PLATFORMS[@]} tags); into $DIR"

# 1. casdap itself, built from a copy of the working tree (no build/ or egg-info left in the checkout)
mkdir -p "$WORK/src" "$WORK/local"
if [ -n "$GIVEN_WHEEL" ]; then
    cp "$GIVEN_WHEEL" "$WORK/local/"
else
    cp -r "$ROOT/setup.py" "$ROOT/pyproject.toml" "$ROOT/README.md" "$ROOT/casdap" "$ROOT/configs" "$WORK/src/"
    find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
    "${PIP[@]}" wheel --quiet --no-deps -w "$WORK/local" "$WORK/src" >/dev/null
fi
CASDAP_WHL="$(ls "$WORK/local"/casdap-*.whl)"
# pure-Python dependencies published only as source archives: built into wheels here
"${PIP[@]}" wheel --quiet --no-deps -w "$WORK/local" "gputil==1.4.0" >/dev/null
echo "[wheelhouse] $([ -n "$GIVEN_WHEEL" ] && echo took || echo built) $(basename "$CASDAP_WHL"), built the GPUtil wheel"

# 2. resolve (metadata only; torch is resolved but never downloaded)
grep -v -E '^\s*(torch|torchvision)\s*[=<>!~]' "$ROOT/constraints.txt" > "$WORK/constraints.txt"
SPEC="$CASDAP_WHL"
[ -n "$EXTRAS" ] && SPEC="casdap[$EXTRAS] @ file://$CASDAP_WHL"
"${PIP[@]}" install --quiet --dry-run --ignore-installed --report "$WORK/report.json" \
    --only-binary=:all: --python-version "$TARGET_PY" --implementation cp "${PLAT_ARGS[@]}" \
    --find-links "$WORK/local" -c "$WORK/constraints.txt" "$SPEC" ${ADDS[@]+"${ADDS[@]}"}
echo "[wheelhouse] resolved in $((SECONDS - t0)) s"

# 3. walk the dependency graph: skip torch/torchvision, stop at what the target has
"$PY" - "$WORK/report.json" "$TARGET_PY" "$ARCH" "$EXTRAS" "$HAVE" "$WORK/needed.txt" ${ADDS[@]+"${ADDS[@]}"} <<'EOF'
import json
import re
import sys

try:
    from packaging.markers import Marker
    from packaging.requirements import Requirement
except ImportError:  # pip always vendors it
    from pip._vendor.packaging.markers import Marker  # noqa: F401
    from pip._vendor.packaging.requirements import Requirement

report, target_py, arch, extras, have_file, out, *adds = sys.argv[1:]


def canon(name):
    return re.sub(r"[-_.]+", "-", name).lower()


items = {canon(i["metadata"]["name"]): i for i in json.load(open(report))["install"]}
have = set()
if have_file:
    for line in open(have_file):
        line = line.split("#", 1)[0].strip()
        for word in line.split():
            name = re.split(r"[=<>!~@ \[;]", word, maxsplit=1)[0]
            if name and name not in ("Package", "-------"):
                have.add(canon(name))
never = {"torch", "torchvision"}
env = {
    "python_version": target_py, "python_full_version": target_py + ".0", "implementation_name": "cpython",
    "implementation_version": target_py + ".0", "platform_python_implementation": "CPython",
    "os_name": "posix", "sys_platform": "linux", "platform_system": "Linux", "platform_machine": arch,
    "platform_release": "", "platform_version": "",
}


def wanted(req, active_extras):
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**env, "extra": e}) for e in (active_extras or {""}))


needed, kept = {}, set()
roots = [("casdap", {""} | {e.strip() for e in extras.split(",") if e.strip()})]
roots += [(canon(Requirement(a).name), {""}) for a in adds]
queue = list(roots)
while queue:
    name, active = queue.pop()
    if name in needed:
        continue
    item = items[name]
    needed[name] = item["metadata"]["version"]
    for text in item["metadata"].get("requires_dist") or []:
        req = Requirement(text)
        dep = canon(req.name)
        if not wanted(req, active) or dep in never or dep in needed:
            continue
        if dep in have:
            kept.add(dep)
            continue
        # a dependency's own extras are optional features casdap does not use
        queue.append((dep, {""}))
with open(out, "w") as f:
    for name, version in sorted(needed.items()):
        f.write(f"{name}=={version}\n")
print(f"[wheelhouse] {len(needed)} distributions to ship; taken from the target (--have): "
      + (", ".join(sorted(kept)) or "none"))
EOF

# 4. download exactly those (GPUtil and casdap come from the local builds)
grep -v -E '^(casdap|gputil)==' "$WORK/needed.txt" > "$WORK/download.txt" || true
if [ -s "$WORK/download.txt" ]; then
    "${PIP[@]}" download --quiet --no-deps --only-binary=:all: --python-version "$TARGET_PY" --implementation cp \
        "${PLAT_ARGS[@]}" -d "$DIR" -r "$WORK/download.txt"
fi
cp "$CASDAP_WHL" "$DIR/"
grep -q '^gputil==' "$WORK/needed.txt" && cp "$WORK/local"/gputil-*.whl "$DIR/"
cp "$ROOT/scripts/offline_install.py" "$DIR/install.py"
cp "$WORK/needed.txt" "$DIR/requirements.txt"

"$PY" - "$DIR" "$TARGET_PY" "$HAVE" "$EXTRAS" "${PLATFORMS[@]}" <<'EOF'
import json
import sys
from pathlib import Path

d, py, have, extras, *platforms = sys.argv[1:]
wheels = sorted(Path(d).glob("*.whl"))
total = sum(w.stat().st_size for w in wheels)
info = {
    "python": py, "platforms": platforms, "have": have or None, "extras": extras or None,
    "wheels": {w.name: w.stat().st_size for w in wheels}, "total_bytes": total,
    "install": "python3 install.py [--venv PATH]  (offline: pip --no-index --no-deps; torch is never replaced)",
}
Path(d, "wheelhouse.json").write_text(json.dumps(info, indent=2) + "\n")
print(f"[wheelhouse] {len(wheels)} wheels, {total / 2**20:.1f} MiB in {d}")
EOF
echo "[wheelhouse] done in $((SECONDS - t0)) s; on the target: python3 $DIR/install.py --venv ~/casdap-env"
