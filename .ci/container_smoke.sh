#!/usr/bin/env bash
# Container-equivalent smoke test, for machines without a Docker engine or a GPU.
#
# Parses the Dockerfile, so that the replay cannot drift from it:
#   - the ARG pins and the build stage's `pip install` lines, replayed into a fresh virtualenv
#     with CPU torch: `-c .ci/constraints-cpu.txt` added, GPU-only packages (cuml-cu*) left out,
#     /src replaced by this checkout; the torch pin must equal the constraints file's;
#   - the final stage's ENV (caches under /tmp -> a temp dir, HOME -> an unwritable path),
#     WORKDIR (/tmp -> the temp dir) and ENTRYPOINT (must be ["vaefusion"]).
# Then, as `docker run --read-only --tmpfs /tmp` would: `vaefusion --version`, a tiny simulated
# dataset made read-only, participant and group levels with tiny cost knobs, exit codes and
# group/summary.json checked, and nothing written outside the temp dir.
#
# Usage: .ci/container_smoke.sh [--check-only] [--keep]
#   --check-only  parse and check the Dockerfile, print the replay plan, install nothing
#   --keep        keep the temp dir (printed) for inspection
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"

CHECK_ONLY=0
KEEP=0
for arg in "$@"; do
    case "$arg" in
        --check-only) CHECK_ONLY=1 ;;
        --keep) KEEP=1 ;;
        *) echo "usage: $0 [--check-only] [--keep]" >&2; exit 64 ;;
    esac
done

# Like the image's /usr/bin/python3.11: a system interpreter that any user can run is
# preferred (a pyenv one under /root cannot be run by the unprivileged user below).
PYTHON="${SMOKE_PYTHON:-}"
if [ -z "$PYTHON" ]; then
    for candidate in /usr/bin/python3.11 /usr/local/bin/python3.11 \
                     "$(command -v python3.11 || true)" "$(command -v python3 || true)"; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then PYTHON="$candidate"; break; fi
    done
fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/vaefusion-smoke.XXXXXX")"
cleanup() {
    chmod -R u+w "$WORK" 2>/dev/null || true
    if [ "$KEEP" -eq 1 ]; then echo "kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# ---------------------------------------------------------------- parse the Dockerfile
# Writes $WORK/plan.sh: PIP_CMDS (array), export lines for ENV, VERSION, WORKDIR_REL.
"$PYTHON" - "$REPO" "$WORK" > "$WORK/plan.sh" <<'EOF'
import json
import re
import shlex
import sys
from pathlib import Path

repo, work = Path(sys.argv[1]), Path(sys.argv[2])
lines, buf = [], ""
for raw in (repo / "Dockerfile").read_text().splitlines():
    if not buf and (not raw.strip() or raw.lstrip().startswith("#")):
        continue
    if raw.lstrip().startswith("#"):
        continue  # a comment inside a continued instruction
    if raw.rstrip().endswith("\\"):
        buf += raw.rstrip()[:-1] + " "
        continue
    lines.append(buf + raw)
    buf = ""


def die(msg):
    print(f"container_smoke: Dockerfile: {msg}", file=sys.stderr)
    raise SystemExit(2)


stages, args = [], {}
for line in lines:
    instr, _, rest = line.strip().partition(" ")
    instr = instr.upper()
    if instr == "FROM":
        parts = rest.split()
        parent = next((s for s in stages if s["name"] == parts[0]), None)  # FROM <stage>
        stages.append({"name": parts[-1] if "AS" in (p.upper() for p in parts) else "",
                       "from": parts[0], "run": [],
                       "env": dict(parent["env"]) if parent else {},
                       "workdir": parent["workdir"] if parent else None,
                       "entrypoint": parent["entrypoint"] if parent else None})
    elif instr == "ARG":
        name, _, default = rest.strip().partition("=")
        args[name] = default.strip().strip('"')
    elif stages and instr == "RUN":
        stages[-1]["run"].append(rest)
    elif stages and instr == "ENV":
        for token in shlex.split(rest):
            key, _, value = token.partition("=")
            stages[-1]["env"][key] = value
    elif stages and instr == "WORKDIR":
        stages[-1]["workdir"] = rest.strip()
    elif stages and instr == "ENTRYPOINT":
        stages[-1]["entrypoint"] = json.loads(rest)


def expand(text):
    return re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), text)


constraints = repo / ".ci" / "constraints-cpu.txt"
pins = dict(re.match(r"\s*([A-Za-z0-9_.-]+)\s*==\s*(\S+)", ln).groups()
            for ln in constraints.read_text().splitlines()
            if re.match(r"\s*[A-Za-z0-9_.-]+\s*==", ln))

build = next((s for s in stages if s["name"] == "build"), None)
if build is None:
    die("no stage named 'build'")
final = stages[-1]
pip_cmds, package_lines = [], 0
for run in build["run"]:
    for cmd in re.split(r"\s*&&\s*", run):
        argv = shlex.split(expand(cmd))
        if argv[:2] != ["pip", "install"]:
            continue
        if "/src" in argv:
            package_lines += 1
            torch = [a for a in argv if a.startswith("torch==")]
            if torch != [f"torch=={pins.get('torch')}"]:
                die(f"the package install pins {torch or 'no torch'}, the CPU constraints pin "
                    f"torch=={pins.get('torch')}: keep them equal")
            argv = [a for a in argv if not re.match(r"cuml-cu\d+", a)]  # GPU-only
            argv = [str(repo) if a == "/src" else a for a in argv]
            argv[2:2] = ["-c", str(constraints)]
        pip_cmds.append(argv)
if package_lines != 1:
    die(f"expected exactly one `pip install ... /src` in the build stage, found {package_lines}")
if final["entrypoint"] != ["vaefusion"]:
    die(f'ENTRYPOINT is {final["entrypoint"]}, expected ["vaefusion"]')
if "VERSION" not in args:
    die("no ARG VERSION")
if not final["env"].get("HOME"):
    die("the final stage sets no HOME")
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MPLCONFIGDIR"):
    if var not in final["env"]:
        die(f"the final stage does not set {var}")

tmp = work / "tmp"
print("PIP_CMDS=()")
for argv in pip_cmds:
    print("PIP_CMDS+=(" + shlex.quote(shlex.join(argv)) + ")")
print("DOCKER_ENV=()")
for key, value in final["env"].items():
    if key == "PATH":
        continue
    if key == "HOME":
        value = "/nonexistent"  # as under --read-only: HOME is not writable
    elif value == "/tmp" or value.startswith("/tmp/"):
        value = str(tmp) + value[4:]
    elif value.startswith("/"):
        die(f"ENV {key}={value} points outside /tmp (not writable under --read-only)")
    print("DOCKER_ENV+=(" + shlex.quote(f"{key}={value}") + ")")
workdir = final["workdir"] or "/"
if workdir != "/tmp" and not workdir.startswith("/tmp/"):
    die(f"WORKDIR {workdir} is not writable under --read-only --tmpfs /tmp")
print(f"VERSION={shlex.quote(args['VERSION'])}")
print(f"RUN_DIR={shlex.quote(str(tmp) + workdir[4:])}")
print(f"SMOKE_TMP={shlex.quote(str(tmp))}")
EOF
# shellcheck source=/dev/null
. "$WORK/plan.sh"

echo "== replay plan (from Dockerfile)"
for cmd in "${PIP_CMDS[@]}"; do echo "  $cmd"; done
for kv in "${DOCKER_ENV[@]}"; do echo "  env $kv"; done
echo "  version $VERSION, run dir $RUN_DIR"
if [ "$CHECK_ONLY" -eq 1 ]; then
    echo "container_smoke: Dockerfile parsed, replay plan OK (--check-only)"
    exit 0
fi

# ---------------------------------------------------------------- install, as the image does
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
    || { echo "container_smoke: the image runs Python 3.11; set SMOKE_PYTHON" >&2; exit 1; }
"$PYTHON" -m venv "$WORK/venv"
VENV_BIN="$WORK/venv/bin"
argv=()
for cmd in "${PIP_CMDS[@]}"; do
    eval "argv=($cmd)"  # shlex-quoted by the parser above
    echo "+ $cmd"
    "$VENV_BIN/pip" "${argv[@]:1}" -q
done
"$VENV_BIN/python" -c "import torch; assert not torch.version.cuda, 'CPU torch expected'"

# ---------------------------------------------------------------- run, as the container would
mkdir -p "$SMOKE_TMP" "$RUN_DIR" "$WORK/out"
# As root (CI), run as uid/gid 1000 like the image's USER, so that read-only means read-only.
AS_USER=()
if [ "$(id -u)" -eq 0 ] && command -v setpriv >/dev/null 2>&1; then
    AS_USER=(setpriv --reuid=1000 --regid=1000 --clear-groups)
    chmod 755 "$WORK"
    chown -R 1000:1000 "$SMOKE_TMP" "$WORK/out"
    if ! "${AS_USER[@]}" env -i "$VENV_BIN/python" -c pass 2>/dev/null; then
        echo "container_smoke: uid 1000 cannot run $PYTHON; running as $(id -un) instead"
        AS_USER=()
    fi
fi
run() {  # the image's environment only; HOME unwritable; TMPDIR and cwd in the temp dir
    (cd "$RUN_DIR" && env -i PATH="$VENV_BIN:/usr/bin:/bin" TMPDIR="$SMOKE_TMP" \
        "${DOCKER_ENV[@]}" "${AS_USER[@]}" "$@")
}
snapshot() {  # path, size and mtime of every input file
    (cd "$WORK/ds" && find . -printf '%p %s %T@ %m\n' | sort)
}

echo "== vaefusion --version"
got="$(run vaefusion --version)"
echo "$got"
[ "$got" = "vaefusion $VERSION" ] || { echo "expected 'vaefusion $VERSION'" >&2; exit 1; }

echo "== vaefusion-simulate (tiny)"
"$VENV_BIN/vaefusion-simulate" "$WORK/ds" --n-subjects 8 --seed 1 --icn-res 9 --n-components 4
chmod -R a-w "$WORK/ds"
snapshot > "$WORK/ds-before.txt"

TINY=(--n-components 4 --downsample 2 --width 0.125 --epochs 1 --folds 2 --latent-dim 4
      --methods vae pca-early --nprocs 1 --omp-nthreads 1)
# BIDS validation runs as in the image (bids-validator-deno is installed there and here)
for level in participant group; do
    echo "== vaefusion $level"
    set +e
    run vaefusion "$WORK/ds" "$WORK/out" "$level" "${TINY[@]}"
    code=$?
    set -e
    if [ "$code" -ne 0 ]; then
        echo "container_smoke: $level level exited $code" >&2
        exit 1
    fi
done

test -s "$WORK/out/group/summary.json" || { echo "no group/summary.json" >&2; exit 1; }
"$VENV_BIN/python" - "$WORK/out/group/summary.json" <<'EOF'
import json
import sys

summary = json.load(open(sys.argv[1]))
auc = summary["methods"]["vae"]["roc_auc_mean"]
print("group/summary.json: vae roc_auc_mean =", auc, "| n_subjects =", summary.get("n_subjects"))
assert auc is None or 0.0 <= auc <= 1.0
EOF
[ ! -e /nonexistent ] || { echo "container_smoke: something created HOME" >&2; exit 1; }
if ! snapshot | cmp -s - "$WORK/ds-before.txt"; then
    echo "container_smoke: the input dataset was modified" >&2
    exit 1
fi
echo "container smoke: OK"
