#!/usr/bin/env bash
# The one prepared GPU check (issue 22): run it wherever a CUDA device is lent, as one command,
# in at most 10 minutes. Results go to $OUT (the device tool's folder) or ./gpu_check_out.
#
#   bash benchmarks/gpu_check.sh            # on a GPU machine: the measurements below
#   bash benchmarks/gpu_check.sh --quick    # anywhere (CPU): the same steps at CI size, to
#                                           # check the script before spending device time
#
# Steps, each under its own time limit so that one slow step cannot eat the others' time:
# 1. the device and library versions;
# 2. training throughput, naive loop against vaefusion's, CPU and GPU rows (fp32, bf16) at the
#    tiny and the full-size architecture (benchmarks/train_throughput.py, JSON rows);
# 3. the simulator's effect sizes at N=60 (benchmarks/effect_sizes.py), so that the GPU run's
#    recovery numbers can be read against the oracle;
# 4. the recovery benchmark (amplitude arm, N=60, the VAE and the PCA baselines on
#    --device cuda; benchmarks/recovery.py), with every cell's summary as JSON.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1

step() {  # step NAME SECONDS COMMAND...: run with a limit, keep going on failure, log it
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit} s)"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "   rc $rc after $((SECONDS - t0)) s; log: $OUT/$name.log"
  tail -n 15 "$OUT/$name.log"
}

step device 60 "$PY" -c "
import platform, torch, vaefusion
print('python', platform.python_version(), 'torch', torch.__version__, 'vaefusion',
      vaefusion.__version__)
print('cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-')
"
if [ "$QUICK" = 1 ]; then
  step throughput 120 "$PY" benchmarks/train_throughput.py --quick --json "$OUT/throughput.json"
  step effect_sizes 120 "$PY" benchmarks/effect_sizes.py --quick
  step recovery 300 "$PY" benchmarks/recovery.py --quick --json "$OUT/recovery.json"
else
  step throughput 150 "$PY" benchmarks/train_throughput.py --json "$OUT/throughput.json"
  step effect_sizes 60 "$PY" benchmarks/effect_sizes.py -n 60 --res 6
  # simulating 60 subjects at 3 mm is single-threaded (about 3-6 min); the group run is on cuda
  step recovery 330 "$PY" benchmarks/recovery.py --n 60 --arms amplitude \
    --json "$OUT/recovery.json" --out "$OUT/recovery.md" -- --device cuda --nprocs 4
fi
echo "== done in $SECONDS s; files in $OUT"
