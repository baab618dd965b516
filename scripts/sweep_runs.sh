#!/usr/bin/env bash
# What the sweeps share: run CONFIG once per (NAME, KEY=VALUE) pair into ROOT/NAME, then
# `llmc report` over ROOT. Used by sweep_sparsity.sh and sweep_methods.sh:
#
#   scripts/sweep_runs.sh CONFIG ROOT NAME KEY=VALUE [NAME KEY=VALUE ...] -- [--set ... for all]
set -euo pipefail
python=${PYTHON:-python}
config=$1
root=$2
shift 2
names=()
sets=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    [ $# -ge 2 ] || { echo "sweep: NAME KEY=VALUE pairs expected" >&2; exit 2; }
    names+=("$1")
    sets+=("$2")
    shift 2
done
[ $# -gt 0 ] && shift
common=("$@")

# Every run's config is checked before the first one starts: a typo fails in seconds, not
# hours in. The first run measures the dense (pretrain) figures; the others skip that.
each=()
for s in "${sets[@]}"; do each+=(--each "$s"); done
positions=$("$python" -m llmc.sweep_support check "$config" "${common[@]}" "${each[@]}")
mkdir -p "$root"
failed=()
measured_dense=0
for i in "${!names[@]}"; do
    out="$root/${names[$i]}"
    if [ -f "$out/results.json" ]; then
        echo "sweep: $out is done; skipped" >&2
        measured_dense=1
        continue
    fi
    skip_dense=()
    if [ $measured_dense -eq 1 ] && [ -n "$positions" ]; then
        skip_dense=(--set "eval.eval_pos=$positions")
    fi
    echo "sweep: ${sets[$i]} -> $out" >&2
    if "$python" -m llmc --config "$config" "${common[@]}" --set "${sets[$i]}" \
            --set "save.save_path=$out" "${skip_dense[@]}"; then
        measured_dense=1
    else
        failed+=("${names[$i]}")
    fi
done
if [ -n "$(find "$root" -name results.json -not -path '*/.llmc/*' -print -quit)" ]; then
    "$python" -m llmc report "$root" --plots "$root/report" | tee "$root/report.md"
fi
if [ ${#failed[@]} -gt 0 ]; then
    echo "sweep: failed: ${failed[*]} (see their llmc: error: lines above)" >&2
    exit 1
fi
