#!/usr/bin/env bash
# One-shot GPU check, run once on a machine with one CUDA GPU, from anywhere:
#
#     bash benchmarks/gpu_check.sh
#
# 1. the test suite (`pytest -q`; the tests run on the CPU, with this machine's CUDA build of torch),
# 2. benchmarks/gpu_smoke.py on CUDA: memorize's chunked engine == the token-by-token reference in float64 for
#    every rule, decode == full forward and CUDA == CPU logits for every architecture,
# 3. benchmarks/gpu.py on CUDA with the time that is left.
# The whole script stays under TOTAL_S seconds (default 570, under 10 minutes; the tests at most TESTS_S, default
# 240): each step runs under `timeout`,
# and gpu.py gets what the first two steps left (it rewrites its JSON and table after every row, so a stopped
# run keeps what it measured). Logs, JSON and the Markdown table go to RESULTS (default benchmarks/results).
# PYTHON picks the interpreter (default: .venv/bin/python when present, else python3); extra arguments are
# passed to gpu.py (e.g. --tf32). Exit status: 0 when every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."
TOTAL_S=${TOTAL_S:-570}
RESULTS=${RESULTS:-benchmarks/results}
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$RESULTS"
SECONDS=0
status=0

left() { echo $((TOTAL_S - SECONDS)); }

step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, log to RESULTS/NAME.log, report one line
    local name=$1 limit=$2 rc
    shift 2
    if ((limit < 10)); then
        echo "SKIP $name: no time left of the ${TOTAL_S} s budget"
        status=1
        return
    fi
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$RESULTS/$name.log" 2>&1
    rc=$?
    if ((rc == 0)); then
        echo "ok   $name ($((SECONDS - start)) s)"
    else
        echo "FAIL $name (exit $rc$( ((rc == 124)) && echo ", stopped at its ${limit} s limit"), $((SECONDS - start)) s): see $RESULTS/$name.log"
        tail -n 15 "$RESULTS/$name.log" | sed 's/^/     /'
        status=1
    fi
}

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: $PYTHON has no torch that sees a CUDA device; install a CUDA build of torch (see README)" >&2
    exit 2
fi
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'on', torch.cuda.get_device_name())"

# The suite is CPU work: spread it over the cores when pytest-xdist is installed.
parallel=()
if "$PYTHON" -c "import xdist" 2>/dev/null; then parallel=(-n "$(( $(nproc) < 8 ? $(nproc) : 8 ))"); fi
TESTS_S=${TESTS_S:-240}
step tests "$(( $(left) < TESTS_S ? $(left) : TESTS_S ))" "$PYTHON" -m pytest -q ${parallel[@]+"${parallel[@]}"}
step smoke "$(( $(left) < 90 ? $(left) : 90 ))" "$PYTHON" benchmarks/gpu_smoke.py --device cuda
limit=$(left)
# rows that would start in the last minute are skipped, so the row in flight can finish
step benchmark "$limit" "$PYTHON" benchmarks/gpu.py --device cuda --budget-s "$((limit > 90 ? limit - 60 : limit / 2))" \
    --out "$RESULTS/gpu.json" "$@"
[[ -f "$RESULTS/gpu.md" ]] && cat "$RESULTS/gpu.md"
echo "gpu_check: $SECONDS s in all; logs, gpu.json and gpu.md in $RESULTS"
exit $status
