#!/usr/bin/env bash
# `make test-min`: install the declared dependency floors exactly (tools/min_requirements.py turns
# every `name>=X` of pyproject.toml into `name==X`) into a fresh venv outside the repository, then
# the package itself without dependencies, and run the unit tests against them. torch stays at
# 2.13.0 (the only CPU wheel this machine can install; see tools/min_requirements.py).
# pip's resolver may still pick newer releases of what the floors pull in transitively; the floors
# themselves are verified against `pip freeze` (tools/check_pins.py) before the tests run. When an
# extra declares a higher floor for a core dependency (video's diffusers>=0.42 over the core's
# 0.40), a second pass installs those raised floors on top and runs the unit tests again, so both
# floors are tested. KEEP=1 keeps the venv; PYTEST_ARGS is passed to pytest.
set -euo pipefail
PYTHON=${PYTHON:-python3.11}
REPO=$(cd "$(dirname "$0")/.." && pwd)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/persona-ml-test-min.XXXXXX")
cleanup() { if [ "${KEEP:-0}" = 1 ]; then echo "kept $TMP"; else rm -rf "$TMP"; fi; }
trap cleanup EXIT
t0=$(date +%s)
phase() { echo "test-min [$(( $(date +%s) - t0 )) s] $*"; }

# every extra (voice, video... as they are added) but gpu (bitsandbytes needs CUDA); dev tools the unit
# tests do not use stay out (ruff, the notebook runner)
"$PYTHON" "$REPO/tools/min_requirements.py" --all-extras --exclude-extra gpu \
    --skip ruff --skip nbclient --skip nbformat --skip ipykernel --raised "$TMP/raised.txt" > "$TMP/min.txt"
phase "floors: $(grep -v '^torch==' "$TMP/min.txt" | tr '\n' ' ')"
"$PYTHON" -m venv "$TMP/venv"
VPY="$TMP/venv/bin/python"
"$VPY" -m pip install --quiet --upgrade pip
"$VPY" -m pip install --quiet "$(grep '^torch==' "$TMP/min.txt")"
phase "installing the floors"
"$VPY" -m pip install --quiet -r "$TMP/min.txt"
# the package from the checkout, without touching the pinned dependencies
"$VPY" -m pip install --quiet --no-deps -e "$REPO"

unit_tests() {
    (cd "$REPO" && HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$VPY" -m pytest tests/unit -q -p no:cacheprovider \
        ${PYTEST_ARGS:-})
}
"$VPY" -m pip freeze > "$TMP/freeze.txt"
"$PYTHON" "$REPO/tools/check_pins.py" "$TMP/min.txt" "$TMP/freeze.txt"
phase "running the unit tests against the floors"
unit_tests
if [ -s "$TMP/raised.txt" ]; then
    phase "second pass: the floors that extras raise: $(tr '\n' ' ' < "$TMP/raised.txt")"
    "$VPY" -m pip install --quiet -r "$TMP/raised.txt"
    "$VPY" -m pip freeze > "$TMP/freeze.txt"
    "$PYTHON" "$REPO/tools/check_pins.py" "$TMP/raised.txt" "$TMP/freeze.txt"
    unit_tests
fi
phase "done"
