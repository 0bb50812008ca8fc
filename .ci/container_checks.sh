#!/usr/bin/env bash
# Static checks of the container recipes and the Boutiques descriptor (no Docker engine, no
# Singularity, no GPU needed):
#   1. hadolint Dockerfile (rules and justified ignores in .hadolint.yaml)
#   2. spython parses Singularity.def, and the parsed recipe has its sections
#   3. bosh validate --bids boutiques.json, and the packaged copy is identical
#   4. the Dockerfile's install line can be replayed by .ci/container_smoke.sh (--check-only)
#   5. shellcheck of the shell scripts, when shellcheck is installed
# Tools are taken from PATH, else from the virtualenv of the python that runs the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
tool() {
    local name="$1" dir
    if command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
        return
    fi
    dir="$("$PY" -c 'import sys, os; print(os.path.dirname(sys.executable))')"
    if [ -x "$dir/$name" ]; then
        echo "$dir/$name"
        return
    fi
    echo "container_checks: '$name' not found (pip install '.[test]')" >&2
    return 1
}

status=0
step() { echo "-- $*"; }
fail() { echo "FAILED: $*" >&2; status=1; }

step "hadolint Dockerfile"
HADOLINT="$(tool hadolint)"
"$HADOLINT" --config .hadolint.yaml Dockerfile || fail "hadolint"
"$HADOLINT" --version

step "spython recipe --parser singularity Singularity.def"
SPYTHON="$(tool spython)"
if out="$("$SPYTHON" recipe --parser singularity Singularity.def)"; then
    grep -q '^FROM vaefusion/vaefusion:' <<<"$out" || fail "spython: no FROM in the parsed recipe"
else
    fail "spython exited non-zero"
fi
SPYTHON_PY="$(dirname "$SPYTHON")/python"
[ -x "$SPYTHON_PY" ] || SPYTHON_PY="$PY"
"$SPYTHON_PY" - <<'EOF' || fail "Singularity.def sections"
import json
import re
from pathlib import Path

from spython.main.parse.parsers import SingularityParser

recipe = next(iter(SingularityParser("Singularity.def").recipe.values()))
image = json.loads(Path("boutiques.json").read_text())["container-image"]["image"]
problems = []
if recipe.fromHeader != image:
    problems.append(f"From: {recipe.fromHeader!r} is not the descriptor's image {image!r}")
if not recipe.labels:
    problems.append("no %labels")
if not recipe.environ:
    problems.append("no %environment")
if 'exec vaefusion "$@"' not in (recipe.cmd or ""):
    problems.append('%runscript is not: exec vaefusion "$@"')
if not recipe.test:
    problems.append("no %test")
# spython keeps no %help; check the raw text
if not re.search(r"^%help\s*\n\s+\S", Path("Singularity.def").read_text(), re.MULTILINE):
    problems.append("no %help text")
for p in problems:
    print("Singularity.def:", p)
print("Singularity.def: From", recipe.fromHeader, "| labels", len(recipe.labels),
      "| environment", len(recipe.environ), "| runscript", recipe.cmd, "| test ok")
raise SystemExit(1 if problems else 0)
EOF

step "bosh validate --bids boutiques.json"
BOSH="$(tool bosh)"
"$BOSH" validate --bids boutiques.json || fail "bosh validate --bids"
cmp -s boutiques.json bids_app/vaefusion/data/boutiques.json \
    || fail "boutiques.json differs from bids_app/vaefusion/data/boutiques.json (copy it)"

step "Dockerfile install line is replayable"
.ci/container_smoke.sh --check-only || fail "container_smoke.sh --check-only"

step "shellcheck"
if command -v shellcheck >/dev/null 2>&1; then
    shellcheck .ci/container_checks.sh .ci/container_smoke.sh platforms/brainlife/main \
        docs/hpc/slurm_singularity.sbatch || fail "shellcheck"
else
    echo "shellcheck not installed: skipped"
fi

if [ "$status" -eq 0 ]; then
    echo "container checks: OK"
else
    echo "container checks: FAILED" >&2
fi
exit "$status"
