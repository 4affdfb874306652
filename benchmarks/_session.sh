# Sourced by a session's device scripts (benchmarks/sNN_*.sh): the output folder, a time budget and a filter.
#   OUT=out/s20a BUDGET_S=580 source benchmarks/_session.sh
# Gives: $OUT (made), left (seconds left of $BUDGET_S since sourcing), quiet (drops warnings from a log on stdin),
# and prints the card's name and max SM clock.
OUT=${OUT:-out/session}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-$PWD/src}  # absolute: scripts cd into benchmarks/
T0=$(date +%s)
left() { echo $(( ${BUDGET_S:-580} - ($(date +%s) - T0) )); }
quiet() { grep -v "Warning\|warn(\|return Variable\|_warn_once\|^$" ; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader | head -1
