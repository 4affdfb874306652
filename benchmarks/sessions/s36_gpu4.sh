#!/usr/bin/env bash
# Thirty-sixth session, call 4: graphed Vim-B's rounds spread 1.365-1.406 in call 1 (and 30.5-33.1 ms unmerged in
# session 35) while Vim-Ti / S held within 0.2%: is the card's clock moving under Vim-B's load? The SM clock, power
# draw and throttle reasons logged every 100 ms (nvidia-smi) while graphed Vim-B and Vim-Ti run 5 alternating rounds
# each. Packed into one archive at the end.
#   bash benchmarks/sessions/s36_gpu4.sh        (OUT=out/s36d by default; about 200 s)
set -uo pipefail
OUT=${OUT:-out/s36d} BUDGET_S=${BUDGET_S:-300} source benchmarks/_session.sh
Q=timestamp,clocks.sm,clocks.mem,power.draw,power.limit,temperature.gpu,clocks_event_reasons.active
nvidia-smi --query-gpu=$Q --format=csv >/dev/null 2>&1 || Q=${Q/clocks_event_reasons/clocks_throttle_reasons}
nvidia-smi --query-gpu=$Q --format=csv -lms 100 > "$OUT/smi.csv" 2>&1 &
SMI=$!
for m in vim_base_patch16_224 vim_tiny_patch16_224; do
  L=$(left); [ "$L" -lt 60 ] && break
  echo "== $m graphed, 5 rounds ($L s left)"
  echo "start $m $(date +%H:%M:%S.%N)" >> "$OUT/marks.txt"
  timeout $(( L - 20 )) python3 -m rmeeto bench $m --preset paper --modes cudagraph --rounds 5 --json "$OUT/$m.json" \
    2>&1 | quiet | tee "$OUT/$m.txt" | grep -i "cudagraph\|error" | cut -c1-200
  echo "end $m $(date +%H:%M:%S.%N)" >> "$OUT/marks.txt"
done
kill $SMI
python3 - "$OUT/smi.csv" <<'PY'
import csv, sys, statistics as st
rows = [r for r in csv.reader(open(sys.argv[1])) if r and not r[0].startswith("timestamp")]
def num(s):
    try: return float(s.strip().split()[0])
    except Exception: return None
sm = [num(r[1]) for r in rows if num(r[1])]; pw = [num(r[3]) for r in rows if num(r[3])]
reasons = {}
for r in rows:
    reasons[r[6].strip()] = reasons.get(r[6].strip(), 0) + 1
print(f"samples {len(rows)}; SM clock MHz min {min(sm)} median {st.median(sm)} max {max(sm)}; power W min {min(pw)} "
      f"median {st.median(pw)} max {max(pw)}; limit {rows[0][4].strip()}")
print("clock event reasons (bitmask: samples):", reasons)
PY
echo "done, $(left) s left"
tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz --warning=no-file-changed . ; find "$OUT" -type f ! -name all.tar.gz -delete
