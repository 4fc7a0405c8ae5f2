#!/usr/bin/env bash
# `make test-min`: install the declared dependency floors exactly (tools/min_requirements.py turns
# every `name>=X` of pyproject.toml into `name==X`) into a fresh venv outside the repository, then
# the package itself without dependencies, and run the unit tests against them. torch stays at
# 2.13.0 (the only CPU wheel this machine can install; see tools/min_requirements.py).
# pip's resolver may still pick newer releases of what the floors pull in transitively; the floors
# themselves are verified with `pip freeze` before the tests run.
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
    --skip ruff --skip nbclient --skip nbformat --skip ipykernel > "$TMP/min.txt"
phase "floors: $(grep -v '^torch==' "$TMP/min.txt" | tr '\n' ' ')"
"$PYTHON" -m venv "$TMP/venv"
VPY="$TMP/venv/bin/python"
"$VPY" -m pip install --quiet --upgrade pip
"$VPY" -m pip install --quiet "$(grep '^torch==' "$TMP/min.txt")"
phase "installing the floors"
"$VPY" -m pip install --quiet -r "$TMP/min.txt"
# the package from the checkout, without touching the pinned dependencies
"$VPY" -m pip install --quiet --no-deps -e "$REPO"
"$VPY" -m pip freeze > "$TMP/freeze.txt"
"$VPY" - "$TMP/min.txt" "$TMP/freeze.txt" <<'EOF'
import re, sys
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
want = {}
for line in open(sys.argv[1]):
    name, _, version = line.split(";")[0].strip().partition("==")
    want[norm(name.split("[")[0])] = version
have = {}
for line in open(sys.argv[2]):
    if "==" in line:
        name, _, version = line.strip().partition("==")
        have[norm(name)] = version
def same(a, b):  # 0.34 == 0.34.0
    pa, pb = a.split("+")[0].split("."), b.split("+")[0].split(".")
    n = max(len(pa), len(pb))
    return pa + ["0"] * (n - len(pa)) == pb + ["0"] * (n - len(pb))
wrong = {n: (v, have.get(n)) for n, v in want.items() if not (n in have and same(v, have[n]))}
if wrong:
    sys.exit(f"test-min: installed versions differ from the floors (wanted, got): {wrong}")
print("test-min: installed exactly the declared floors: " + ", ".join(f"{n}=={have[n]}" for n in sorted(want)))
EOF
phase "running the unit tests against the floors"
cd "$REPO"
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$VPY" -m pytest tests/unit -q -p no:cacheprovider ${PYTEST_ARGS:-}
phase "done"
