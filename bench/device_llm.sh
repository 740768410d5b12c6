#!/usr/bin/env bash
# The engine (bench/llm.py) on the lent GPU machine: SmolLM2-135M's GGUF, carried in two halves.
#
# The 98 MB GGUF does not fit one call's 64 MiB, so bench/prep_device_llm.sh
# splits it into .gguf_a/ (first half) and .gguf_b/ (second half, SHA256SUMS,
# tokenizer.json.gz). Call 1 carries .gguf_a (bench/device_run.sh also copies
# it to /tmp/kdsl_gguf_a); call 2, on the still-warm machine, carries .gguf_b
# and runs this script:
#
#   device tool: carry [".device", ".gguf_b"], timeout_s 600,
#                command "bash .device/on-device.sh bash bench/device_llm.sh"
#   local dry run (PoCL, tiny sizes):
#                QUICK=1 PYOPENCL_CTX=portable OUT=/tmp/out bash bench/device_llm.sh
#
# It joins the halves into /tmp, checks both halves and the whole file against
# .gguf_b/SHA256SUMS, and runs bench/llm.py on the GGUF with transformers on
# CUDA as the peer. Where the first half is missing or any checksum fails (the
# machine went cold between the calls), it builds a Hugging Face folder with
# SmolLM2-135M's shapes and RANDOM weights (bench/random_model.py, the real
# tokenizer from .gguf_b) and benchmarks that instead: same shapes, so the
# same speed, and the result says "weights": "random".
#
# Writes $OUT/llm_gguf.json or $OUT/llm_random.json, and $OUT/log_llm.txt.
# Environment: QUICK=1 (pp64/tg16, m0e4 only, 2-layer random model),
# BUDGET_S (default 520), LLM_ARGS (replaces the bench flags after --model),
# FORCE_RANDOM=1 (skip the GGUF), GGUF_A_DIRS (where to look for the first half).
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 1
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/kdsl_out}
QUICK=${QUICK:-0}
BUDGET_S=${BUDGET_S:-520}
FORCE_RANDOM=${FORCE_RANDOM:-0}
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
B_DIR=.gguf_b
GGUF_A_DIRS=${GGUF_A_DIRS:-.gguf_a /tmp/kdsl_gguf_a}
JOINED=/tmp/kdsl_model/$NAME
RANDOM_DIR=/tmp/kdsl_random_smollm2
START=$(date +%s)
mkdir -p "$OUT"

if [ "$QUICK" = 1 ]; then
  DEFAULT_ARGS="--quick --quants m0e4 --peers transformers --threads 2 --no-plot"
  RANDOM_LAYERS=${RANDOM_LAYERS:-2}
else
  DEFAULT_ARGS="--prompt-tokens 512 --gen-tokens 128 --repeat 3 --quants m0e4,fp16,fp32
                --peers transformers --threads 16 --no-plot"
  RANDOM_LAYERS=${RANDOM_LAYERS:-30}
fi
LLM_ARGS=${LLM_ARGS:-$DEFAULT_ARGS}

elapsed() { echo $(( $(date +%s) - START )); }
sha_of() { sha256sum "$1" | cut -d' ' -f1; }
expected() { awk -v f="$1" '$2 == f || $2 == "*" f {print $1}' "$B_DIR/SHA256SUMS"; }

# join_gguf: the joined, verified GGUF's path on stdout, or nothing (reasons on stderr)
join_gguf() {
  if [ ! -f "$B_DIR/SHA256SUMS" ] || [ ! -f "$B_DIR/$NAME.part_ab" ]; then
    echo "no $B_DIR/SHA256SUMS or $B_DIR/$NAME.part_ab: was .gguf_b carried?" >&2
    return 1
  fi
  if [ "$(sha_of "$B_DIR/$NAME.part_ab")" != "$(expected "$NAME.part_ab")" ]; then
    echo "second half: checksum mismatch" >&2
    return 1
  fi
  local a=""
  for dir in $GGUF_A_DIRS; do
    if [ -f "$dir/$NAME.part_aa" ]; then
      if [ "$(sha_of "$dir/$NAME.part_aa")" = "$(expected "$NAME.part_aa")" ]; then
        a=$dir/$NAME.part_aa
        break
      fi
      echo "$dir/$NAME.part_aa: checksum mismatch" >&2
    fi
  done
  if [ -z "$a" ]; then
    echo "first half not found in: $GGUF_A_DIRS (the machine went cold between the calls?)" >&2
    return 1
  fi
  mkdir -p "$(dirname "$JOINED")"
  cat "$a" "$B_DIR/$NAME.part_ab" > "$JOINED" || return 1
  if [ "$(sha_of "$JOINED")" != "$(expected "$NAME")" ]; then
    echo "joined file: checksum mismatch" >&2
    rm -f "$JOINED"
    return 1
  fi
  echo "joined $a + $B_DIR/$NAME.part_ab -> $JOINED ($(stat -c %s "$JOINED") bytes, sha256 ok)" >&2
  echo "$JOINED"
}

main() {
  echo "### bench/device_llm.sh: QUICK=$QUICK BUDGET_S=$BUDGET_S OUT=$OUT $(date -u +%FT%TZ)"
  command -v nvidia-smi >/dev/null && nvidia-smi -L
  timeout 60 python3 bench/device_info.py || echo "### device info failed (rc=$?)"
  local model="" kind
  if [ "$FORCE_RANDOM" != 1 ]; then
    model=$(join_gguf)
  fi
  if [ -n "$model" ]; then
    kind=gguf
  else
    kind=random
    echo "### FALLBACK: SmolLM2-135M shapes with RANDOM weights ($RANDOM_LAYERS layers)"
    local tok=$B_DIR/tokenizer.json.gz
    [ -f "$tok" ] || tok=""
    timeout 120 python3 bench/random_model.py "$RANDOM_DIR" --layers "$RANDOM_LAYERS" \
      ${tok:+--tokenizer "$tok"} || { echo "### random model: FAILED"; return 1; }
    model=$RANDOM_DIR
  fi
  local left=$(( BUDGET_S - $(elapsed) - 10 ))
  (( left < 30 )) && left=30           # timeout 0 would mean no limit
  echo
  echo "### llm ($kind, timeout ${left}s, at $(elapsed)s): bench/llm.py --model $model $LLM_ARGS"
  local t0 rc
  t0=$(date +%s)
  # shellcheck disable=SC2086  # the flags are meant to split
  timeout -k 10 "$left" python3 bench/llm.py --model "$model" $LLM_ARGS --json "$OUT/llm_$kind.json"
  rc=$?
  echo "### llm ($kind): rc=$rc in $(( $(date +%s) - t0 ))s; $(elapsed)s in all"
  [ "$kind" = random ] && echo "### NOTE: RANDOM weights (machine was cold): speed only"
  return $rc
}

main 2>&1 | tee "$OUT/log_llm.txt" | grep -a --line-buffered -v -E 'Warn|lambda'
rc=${PIPESTATUS[0]}
exit "$rc"
