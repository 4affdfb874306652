#!/usr/bin/env bash
# Twenty-fifth session, call 1: the in_proj / out_proj GEMMs by backend at every token count of the merged schedule
# (cuBLAS, cuBLASLt, Triton tiles, persistent TMA tiles, TunableOp's pick), then whole graphed Vim-S under cuBLAS,
# cuBLASLt and TunableOp.
#   bash benchmarks/sessions/s25_gpu1.sh        (OUT=out/s25a by default; about 540 s)
set -uo pipefail
OUT=${OUT:-out/s25a} BUDGET_S=${BUDGET_S:-560} source benchmarks/_session.sh
echo "== 1. GEMMs by backend, Vim-S then Vim-B"
(cd benchmarks && timeout 200 python3 gemm_ab_gpu.py --models S,B 2>&1) | quiet | tee "$OUT/gemm.txt" | grep -v "^   "
echo "== 2. TunableOp's pick, Vim-S ($(left) s left)"
(cd benchmarks && PYTORCH_TUNABLEOP_ENABLED=1 PYTORCH_TUNABLEOP_TUNING=1 PYTORCH_TUNABLEOP_FILENAME=$OLDPWD/$OUT/tunable.csv \
  timeout 120 python3 gemm_ab_gpu.py --models S --backends cublas 2>&1) | quiet | tee "$OUT/gemm_tunable.txt" | grep -v "^   "
for v in base lt tunable; do
  L=$(left); echo "== 3. whole Vim-S graphed, $v ($L s left)"
  [ "$L" -lt 60 ] && break
  case $v in
    base) env=();;
    lt) env=(TORCH_BLAS_PREFER_CUBLASLT=1);;
    tunable) env=(PYTORCH_TUNABLEOP_ENABLED=1 PYTORCH_TUNABLEOP_TUNING=1 PYTORCH_TUNABLEOP_FILENAME=$OUT/tunable_model.csv);;
  esac
  env "${env[@]}" timeout $(( L - 10 < 150 ? L - 10 : 150 )) python3 -m rmeeto bench vim_small_patch16_224 --preset paper \
    --modes cudagraph --rounds 3 2>&1 | quiet | tee "$OUT/bench_$v.txt" | grep -i "cudagraph\|error" | cut -c1-200
done
echo "done, $(left) s left"
