# Compares the firmware's decoded defmt log with the host engine's logits (assets/expected.txt).
#   awk -v dtype=f32 -v tol=1e-3 -f compare.awk assets/expected.txt DEVICE_LOG
# Fails (exit 1) unless every image of `dtype` is on the device, with the host's top-1 and every
# logit within `tol` of the host's; prints the largest difference.
FNR == NR { if ($1 == dtype) { top[$2] = $3; n = 0; for (k = 5; k <= NF; k++) want[$2, n++] = $k; classes = n; images++ } next }
/ image [0-9]+ top1=/ {
  i = $0; sub(/.* image /, "", i); sub(/ .*/, "", i)
  t = $0; sub(/.* top1=/, "", t); sub(/ .*/, "", t)
  l = $0; sub(/.*logits=\[/, "", l); sub(/\].*/, "", l); gsub(/,/, " ", l)
  got = split(l, v, " ")
  seen++
  if (t != top[i]) { printf "FAIL (%s): image %d top-1 %d, host %d\n", dtype, i, t, top[i]; bad = 1 }
  if (got != classes) { printf "FAIL (%s): image %d has %d logits, host %d\n", dtype, i, got, classes; bad = 1 }
  for (k = 1; k <= got; k++) { d = v[k] - want[i, k - 1]; if (d < 0) d = -d; if (d > maxd) maxd = d; if (d > tol) { printf "FAIL (%s): image %d logit %d differs by %g (> %g)\n", dtype, i, k - 1, d, tol; bad = 1 } }
}
END {
  if (seen != images) { printf "FAIL (%s): %d images on the device, %d on the host\n", dtype, seen, images; bad = 1 }
  printf "host check (%s): %s: %d images, max |logit diff| %g (tolerance %g)\n", dtype, bad ? "FAILED" : "top-1 equal, logits within tolerance", seen, maxd, tol
  exit bad
}
