#!/usr/bin/env bash
# Every method at one sparsity and type, each run into its own save path, then one report:
#
#   scripts/sweep_methods.sh CONFIG SPARSITY [TYPE] [-- --set key=value ...]
#   scripts/sweep_methods.sh configs/sparse/wanda.yml 0.5 2:4
#
# METHODS picks the methods (default: every registered one, `python -m llmc.sweep_support methods`);
# CONFIG should set no method's own keys (configs/sparse/wanda.yml sets none), as one method's
# key is an error under another. Runs go to $SWEEP_DIR/<method> (default SWEEP_DIR:
# sweeps/methods_<SPARSITY>_<TYPE>); the report (report.md, plots in report/) over them. As in
# sweep_sparsity.sh: finished runs are skipped, the dense figures are measured once, a failed
# run does not stop the others (exit 1 at the end). PYTHON picks the interpreter.
set -euo pipefail
here=$(dirname "$0")
usage() { echo "usage: $0 CONFIG SPARSITY [TYPE] [-- --set key=value ...]" >&2; exit 2; }
[ $# -ge 2 ] || usage
config=$1
sparsity=$2
shift 2
type=unstructured
if [ $# -gt 0 ] && [ "$1" != "--" ]; then type=$1; shift; fi
[ $# -gt 0 ] && { [ "$1" = "--" ] || usage; shift; }
python=${PYTHON:-python}
methods=${METHODS:-$("$python" -m llmc.sweep_support methods)}
root=${SWEEP_DIR:-sweeps/methods_${sparsity}_${type//:/-}}

runs=()
for method in $methods; do
    runs+=("$method" "sparse.method=$method")
done
"$here/sweep_runs.sh" "$config" "$root" "${runs[@]}" -- \
    --set "sparse.weight.sparsity=$sparsity" --set "sparse.weight.sparsity_type=$type" "$@"
