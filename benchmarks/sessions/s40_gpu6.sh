#!/usr/bin/env bash
# Fortieth session, call 6, the final tree (x_dbl rows aligned): issue 14's inference targets, Vim-Ti / S / B
# eager and graphed in alternating rounds, with nvidia-smi logged: s39_gpu5.sh with 5 rounds of 60 repeats.
#   bash benchmarks/sessions/s40_gpu6.sh        (OUT=out/s40f by default)
OUT=${OUT:-out/s40f} BUDGET_S=${BUDGET_S:-520} ROUNDS=5 REPEATS=60 exec bash benchmarks/sessions/s39_gpu5.sh
