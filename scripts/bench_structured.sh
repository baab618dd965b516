#!/usr/bin/env bash
# What structured pruning buys on the built-in model (docs/performance.md): the shipped
# structured configs, and Wanda 50% for contrast, each run into ROOT/<name> with its saved model
# measured against the dense checkpoint at the end of the run (save.bench: speed and memory),
# then one `llmc report` over them (perplexity, cloze accuracy, parameters and checkpoint bytes
# before and after, the bench's ratios; plots in ROOT/report):
#
#   scripts/bench_structured.sh [ROOT] [-- --set key=value ...]   (ROOT: sweeps/structured)
#
# Every config is checked before the first run; the first run measures the dense figures, the
# others only the pruned ones; finished runs are skipped; a failed run does not stop the
# others (exit 1 at the end). PYTHON picks the interpreter.
set -euo pipefail
here=$(dirname "$0")
python=${PYTHON:-python}
root=sweeps/structured
if [ $# -gt 0 ] && [ "$1" != "--" ]; then root=$1; shift; fi
[ $# -gt 0 ] && shift
common=(--set save.bench=true --set save.save_trans=true "$@")
configs=(structured/shortgpt structured/contiguous structured/width structured/shortgpt_wanda
         sparse/wanda)
for name in "${configs[@]}"; do
    "$python" -m llmc.sweep_support check "$here/../configs/$name.yml" "${common[@]}" >/dev/null
done
mkdir -p "$root"
failed=()
dense=()
for name in "${configs[@]}"; do
    out="$root/$(basename "$name")"
    if [ -f "$out/results.json" ]; then
        echo "bench_structured: $out is done; skipped" >&2
        dense=(--set "eval.eval_pos=[transformed]")
        continue
    fi
    echo "bench_structured: configs/$name.yml -> $out" >&2
    if "$python" -m llmc --config "$here/../configs/$name.yml" "${common[@]}" "${dense[@]}" \
            --set "save.save_path=$out"; then
        dense=(--set "eval.eval_pos=[transformed]")
    else
        failed+=("$name")
    fi
done
"$python" -m llmc report "$root" --plots "$root/report" | tee "$root/report.md"
if [ ${#failed[@]} -gt 0 ]; then
    echo "bench_structured: failed: ${failed[*]} (see their llmc: error: lines above)" >&2
    exit 1
fi
