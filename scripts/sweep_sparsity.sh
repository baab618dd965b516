#!/usr/bin/env bash
# One config over several sparsities, each run into its own save path, then one report:
#
#   scripts/sweep_sparsity.sh CONFIG SPARSITY... [-- --set key=value ...]
#   scripts/sweep_sparsity.sh configs/sparse/wanda.yml 0.3 0.5 0.7
#
# Runs go to $SWEEP_DIR/sparsity_<S> (default SWEEP_DIR: sweeps/<config name>); the report (table
# in report.md, plots in report/) over them. A run whose results.json is there already is
# skipped, so running the sweep again finishes an interrupted one. The dense (pretrain) figures
# are measured by the first run alone: `llmc report` fills them in for the others (same model,
# same evaluation). A failed run does not stop the others; the script then exits 1.
# PYTHON picks the interpreter (default: python).
set -euo pipefail
here=$(dirname "$0")
usage() { echo "usage: $0 CONFIG SPARSITY... [-- --set key=value ...]" >&2; exit 2; }
[ $# -ge 2 ] || usage
config=$1
shift
values=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do values+=("$1"); shift; done
[ $# -gt 0 ] && shift  # the --: what follows goes to every run
[ ${#values[@]} -gt 0 ] || usage
name=$(basename "${config%.*}")
root=${SWEEP_DIR:-sweeps/$name}

runs=()
for value in "${values[@]}"; do
    runs+=("sparsity_$value" "sparse.weight.sparsity=$value")
done
"$here/sweep_runs.sh" "$config" "$root" "${runs[@]}" -- "$@"
