#!/usr/bin/env bash
# The kernel benchmarks on the lent GPU machine (NVIDIA OpenCL), in one call of about 9 minutes.
#
#   device tool: carry [".device", ".gguf_a"], timeout_s 600,
#                command "bash .device/on-device.sh bash bench/device_run.sh"
#   local dry run (PoCL, tiny sizes):
#                QUICK=1 PYOPENCL_CTX=portable OUT=/tmp/out bash bench/device_run.sh
#
# Runs bench/matmul.py, fp4.py, attention.py, kernels.py, softmax.py and
# elementwise.py, one after another, each under `timeout` and a deadline for
# the whole script (BUDGET_S, default 500 s), so a slow or failing bench costs
# only its own results. Each JSON goes to a work folder that is packed into
# $OUT/results.tgz after every step (what finished comes back even if the
# call is cut); everything printed goes to $OUT/log.txt. .device/prep.sh's
# wheels and NVIDIA's ICD come from .device/on-device.sh, which also sets
# PYOPENCL_CTX=NVIDIA; kdsl picks its device from KDSL_DEVICE, else
# PYOPENCL_CTX, else the first GPU.
#
# It also copies .gguf_a (the first half of the SmolLM2 GGUF, carried by this
# call) to /tmp, where bench/device_llm.sh looks for it in the next call.
#
# Environment: QUICK=1 (smoke sizes), BUDGET_S, REQUIRE_GPU (default 1 unless
# QUICK: stop when the device is not a GPU), <NAME>_ARGS to replace a bench's
# flags (MATMUL_ARGS, FP4_ARGS, ATTENTION_ARGS, KERNELS_ARGS, SOFTMAX_ARGS,
# ELEMENTWISE_ARGS), BENCHES (space-separated subset, in order).
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 1
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/kdsl_out}
QUICK=${QUICK:-0}
BUDGET_S=${BUDGET_S:-500}
REQUIRE_GPU=${REQUIRE_GPU:-$([ "$QUICK" = 1 ] && echo 0 || echo 1)}
RES=${RES:-/tmp/kdsl_results}
BENCHES=${BENCHES:-matmul fp4 attention kernels softmax elementwise}
START=$(date +%s)
mkdir -p "$OUT"
rm -rf "$RES" && mkdir -p "$RES"

if [ "$QUICK" = 1 ]; then
  q="--quick --no-plot"
  DEFAULT_ARGS=$q         # a bench named in BENCHES but not listed here
  declare -A ARGS=([matmul]=$q [fp4]=$q [attention]=$q [kernels]=$q [softmax]=$q [elementwise]=$q)
  declare -A MAX_S=([matmul]=240 [fp4]=240 [attention]=240 [kernels]=240 [softmax]=120
                    [elementwise]=120)
else
  DEFAULT_ARGS="--no-plot"
  declare -A ARGS=([matmul]="--sweep --no-plot" [fp4]="--sweep --no-plot" [attention]="--no-plot"
                   [kernels]="--no-plot" [softmax]="--no-plot" [elementwise]="--no-plot")
  # each bench's own cap; the deadline (BUDGET_S) cuts the later ones shorter if needed
  declare -A MAX_S=([matmul]=150 [fp4]=120 [attention]=90 [kernels]=90 [softmax]=45
                    [elementwise]=50)
fi
for b in matmul fp4 attention kernels softmax elementwise; do
  var=${b^^}_ARGS
  [ -n "${!var+x}" ] && ARGS[$b]=${!var}
done

elapsed() { echo $(( $(date +%s) - START )); }
pack() { tar czf "$OUT/results.tgz.tmp" -C "$RES" . && mv "$OUT/results.tgz.tmp" "$OUT/results.tgz"; }
SUMMARY=()

# step NAME MAX_SECONDS COMMAND...: run under timeout, never past the deadline
step() {
  local name=$1 max=$2 t0 rc left
  shift 2
  left=$(( BUDGET_S - $(elapsed) - 10 ))
  if (( left < 20 )); then
    echo "### $name: skipped, only ${left}s left of BUDGET_S=$BUDGET_S"
    SUMMARY+=("$name: skipped (deadline)")
    return
  fi
  (( max > left )) && max=$left
  echo
  echo "### $name (timeout ${max}s, at $(elapsed)s): $*"
  t0=$(date +%s)
  timeout -k 10 "$max" "$@"
  rc=$?
  local took=$(( $(date +%s) - t0 ))
  case $rc in
    0) SUMMARY+=("$name: ok in ${took}s") ;;
    124|137) SUMMARY+=("$name: TIMED OUT after ${took}s (cap ${max}s)") ;;
    *) SUMMARY+=("$name: FAILED rc=$rc after ${took}s") ;;
  esac
  echo "### $name: rc=$rc in ${took}s"
  pack
}

main() {
  echo "### bench/device_run.sh: QUICK=$QUICK BUDGET_S=$BUDGET_S OUT=$OUT $(date -u +%FT%TZ)"
  command -v nvidia-smi >/dev/null && nvidia-smi -L
  grep -m1 'model name' /proc/cpuinfo
  if [ -d .gguf_a ]; then          # keep the GGUF's first half for the next call (device_llm.sh)
    mkdir -p /tmp/kdsl_gguf_a && cp .gguf_a/* /tmp/kdsl_gguf_a/ &&
      echo "copied .gguf_a to /tmp/kdsl_gguf_a: $(ls /tmp/kdsl_gguf_a)"
  fi
  local gpu_flag=""
  [ "$REQUIRE_GPU" = 1 ] && gpu_flag=--require-gpu
  step device-info 60 python3 bench/device_info.py $gpu_flag
  if [[ ${SUMMARY[-1]} != "device-info: ok"* ]]; then
    echo "### no usable device: no benchmark run"
    printf '%s\n' "${SUMMARY[@]}"
    return 1
  fi
  for b in $BENCHES; do
    # shellcheck disable=SC2086  # the flags are meant to split
    step "$b" "${MAX_S[$b]:-90}" python3 "bench/$b.py" ${ARGS[$b]-$DEFAULT_ARGS} --json "$RES/$b.json"
  done
  pack
  echo
  echo "### summary ($(elapsed)s in all; JSON in \$OUT/results.tgz: $(cd "$RES" && ls | tr '\n' ' '))"
  printf '%s\n' "${SUMMARY[@]}"
}

# the whole log to $OUT/log.txt; the returned output tail leaves out compiler-warning lines
main 2>&1 | tee "$OUT/log.txt" | grep -a --line-buffered -v -E 'Warn|lambda'
rc=${PIPESTATUS[0]}
exit "$rc"
