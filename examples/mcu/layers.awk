# Sums the kernels binary's per-layer timings (`layer dtype=.. kind=.. macs=.. ticks=..`) by
# weight dtype and layer kind:  awk -v ipt=40 -f layers.awk KERNELS_LOG
# (ipt = instructions per SysTick tick, from the calibration).
/ layer dtype=/ {
  d = $0; sub(/.*dtype=/, "", d); sub(/ .*/, "", d)
  k = $0; sub(/.*kind=/, "", k); sub(/ .*/, "", k)
  m = $0; sub(/.*macs=/, "", m); sub(/ .*/, "", m)
  t = $0; sub(/.*ticks=/, "", t); sub(/ .*/, "", t)
  macs[d, k] += m; ticks[d, k] += t; macs[d, "all"] += m; ticks[d, "all"] += t
  if (!(d in seen)) { seen[d] = 1; order[++nd] = d }
}
END {
  split("Stem Dw Pw Fc all", kinds, " ")
  printf "%-5s %-5s %10s %12s %8s\n", "dtype", "kind", "MACs", "instructions", "i/MAC"
  for (i = 1; i <= nd; i++) for (j = 1; j <= 5; j++) {
    d = order[i]; k = kinds[j]
    if (macs[d, k] > 0) printf "%-5s %-5s %10d %12d %8.2f\n", d, k, macs[d, k], ticks[d, k] * ipt, ticks[d, k] * ipt / macs[d, k]
  }
}
