#!/usr/bin/env bash
# `make wheel-check`: build the wheel from this checkout, install it into a fresh venv outside the
# repository (torch pinned to 2.13.0 first, the CPU wheel), and run tools/wheel_smoke.py there from
# a folder that is not the repository. Everything lives in one temp folder, removed at the end
# (KEEP=1 keeps it). Prints the wheel's size and each phase's wall time.
set -euo pipefail
PYTHON=${PYTHON:-python3.11}
TORCH_PIN=${TORCH_PIN:-torch==2.13.0}
REPO=$(cd "$(dirname "$0")/.." && pwd)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/persona-ml-wheel-check.XXXXXX")
cleanup() { if [ "${KEEP:-0}" = 1 ]; then echo "kept $TMP"; else rm -rf "$TMP"; fi; }
trap cleanup EXIT
t0=$(date +%s)
phase() { echo "wheel-check [$(( $(date +%s) - t0 )) s] $*"; }

# Build from a copy of the files git would check out (tracked + untracked, not ignored): the wheel is
# what a clean clone gives, and setuptools' build/ and *.egg-info never land in the checkout.
mkdir -p "$TMP/src" "$TMP/dist" "$TMP/work" "$TMP/cwd"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
    | tar --null --ignore-failed-read -T - -cf - 2>/dev/null) | tar -xf - -C "$TMP/src"
phase "building the wheel"
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$TMP/dist" "$TMP/src"
WHEEL=$(ls "$TMP"/dist/persona_ml-*.whl)
phase "built $(basename "$WHEEL") ($(du -k "$WHEEL" | cut -f1) KiB)"
"$PYTHON" - "$WHEEL" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
configs = sorted(n for n in names if n.startswith("persona_ml/configs/") and n.endswith(".yaml"))
stray = sorted({n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} - {"persona_ml"})
if not configs or stray:
    sys.exit(f"wheel contents wrong: configs={configs} stray top-level entries={stray}")
print(f"wheel-check: {len(names)} files, top level persona_ml/ only, {len(configs)} packaged configs")
EOF

phase "creating a fresh venv and installing $TORCH_PIN"
"$PYTHON" -m venv "$TMP/venv"
VPY="$TMP/venv/bin/python"
"$VPY" -m pip install --quiet --upgrade pip
"$VPY" -m pip install --quiet "$TORCH_PIN"
phase "installing the wheel with its dlib extra"
"$VPY" -m pip install --quiet "${WHEEL}[dlib]" "$TORCH_PIN"
"$VPY" -m pip check
phase "running the smoke script from $TMP/cwd"
cd "$TMP/cwd"
"$VPY" -I "$REPO/tools/wheel_smoke.py" --repo "$REPO" --work "$TMP/work"
phase "done"
