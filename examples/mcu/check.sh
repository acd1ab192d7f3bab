#!/usr/bin/env bash
# Builds the Cortex-M4F firmware (f32 and f16 weights), runs it in QEMU (mps2-an386, Cortex-M4F)
# and checks it against the host engine; prints flash, RAM, stack, arena and instructions per MAC.
#
#   bash examples/mcu/check.sh [mcu_assets options, e.g. --scale 0.5 or --weights FILE]
#
# Fails unless the kernel check (src/bin/kernels.rs: the M4F GEMM / depthwise / conv / linear
# path against naive loops on odd shapes, bit for bit) exits 0 and, for both weight dtypes: the
# firmware exits 0, every image's top-1 equals the host engine's and every logit is within
# F32_TOL / F16_TOL of the host engine's (scalar path, same weight file), and no allocator is
# linked. Also prints the instructions per MAC of each layer kind. Installs what is missing (the
# thumbv7em target, qemu-system-arm, binutils for readelf, defmt-print: examples/firmware_tools.sh)
# and builds the firmware with its source paths remapped, so the flash figures do not depend on
# where the checkout is.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
mcu="$root/examples/mcu"
cd "$root"
start=$(date +%s)
say() { echo "[mcu $(( $(date +%s) - start ))s] $*"; }

# Largest accepted |device − host| per logit. The device's M4F kernels do the host's scalar
# arithmetic in the same order (`vmla`, not fused), so both are bit-identical in practice (see
# docs/MCU.md); the bounds only give slack.
F32_TOL=1e-3
F16_TOL=1e-5
QEMU_TIMEOUT=${QEMU_TIMEOUT:-120}

# --- tools (examples/firmware_tools.sh, shared with examples/mcu_finetune/check.sh) ----------
source "$root/examples/firmware_tools.sh"
firmware_tools

# --- assets and firmware ---------------------------------------------------------------------
say "assets: cargo run --example mcu_assets -- --out examples/mcu/assets $*"
cargo run --quiet --example mcu_assets -- --out examples/mcu/assets "$@"

out="$mcu/target/check"
mkdir -p "$out"
for dtype in f32 f16; do
  feat=()
  [ "$dtype" = f16 ] && feat=(--features f16)
  say "firmware ($dtype): cargo build --release ${feat[*]} (source paths remapped, see firmware_tools.sh)"
  (cd "$mcu" && CARGO_TARGET_DIR="$mcu/target" firmware_cargo build --quiet --release "${feat[@]}")
  cp "$mcu/target/thumbv7em-none-eabihf/release/tinykd-mcu" "$out/tinykd-mcu-$dtype.elf"
done
# The kernel check binary (src/bin/kernels.rs) does not depend on the feature.
cp "$mcu/target/thumbv7em-none-eabihf/release/kernels" "$out/kernels.elf"

# --- kernel check: the M4F kernel path vs naive loops on odd shapes, and per-layer timing ------
qemu() {
  timeout "$QEMU_TIMEOUT" qemu-system-arm -machine mps2-an386 -cpu cortex-m4 -nographic \
    -semihosting-config enable=on,target=native -icount shift=0 -kernel "$1" </dev/null \
    | defmt-print -e "$1" > "$2"
}
ipt_of() {
  local n1 t1 n2 t2
  read -r n1 t1 n2 t2 <<< "$(grep ' calib ' "$1" | grep -oE '=[0-9]+' | tr -d = | tr '\n' ' ')"
  awk -v a="$n1" -v b="$n2" -v s="$t1" -v t="$t2" 'BEGIN { printf "%.4f", (b - a) / (t - s) }'
}
fail=0
klog="$out/kernels.log"
say "kernel check: qemu-system-arm ... -kernel kernels.elf (src/bin/kernels.rs)"
set +e
qemu "$out/kernels.elf" "$klog"
status=${PIPESTATUS[0]}
set -e
grep -v ' layer dtype=' "$klog"
if [ "$status" -ne 0 ]; then
  echo "FAIL (kernels): kernel check exit status $status (124 = timeout)"; fail=1
else
  layers=$(awk -v ipt="$(ipt_of "$klog")" -f "$mcu/layers.awk" "$klog")
fi

# --- checks per variant ----------------------------------------------------------------------
# Section sizes in bytes: flash = vector table + text + rodata + the load image of .data;
# RAM = data + bss + uninit (the stack takes the rest of RAM and is measured separately).
size_of() {
  local hex
  hex=$(readelf -S -W "$1" | sed -E 's/^ *\[ *[0-9]+\] *//' | awk -v s="$2" '$1 == s { print $5 }')
  echo $(( 16#${hex:-0} ))
}

summary=()
for dtype in f32 f16; do
  elf="$out/tinykd-mcu-$dtype.elf"
  log="$out/$dtype.log"
  tol=$F32_TOL
  [ "$dtype" = f16 ] && tol=$F16_TOL

  # No global allocator: neither the allocator shims nor the error handler may be linked.
  if readelf -s -W "$elf" | grep -E '__rust_(alloc|dealloc|realloc|alloc_zeroed|alloc_error_handler|no_alloc_shim)|__rg_alloc|__rdl_alloc' ; then
    echo "FAIL ($dtype): allocator symbols are linked"; fail=1
  fi

  say "run ($dtype): qemu-system-arm -machine mps2-an386 -cpu cortex-m4 -icount shift=0 -kernel $(basename "$elf")"
  set +e
  qemu "$elf" "$log"
  status=${PIPESTATUS[0]}
  set -e
  sed -E 's/logits=\[([^]]{0,60}).*/logits=[\1 ...]/' "$log"
  if [ "$status" -ne 0 ]; then
    echo "FAIL ($dtype): firmware exit status $status (124 = timeout)"; fail=1; continue
  fi

  # Host-side comparison with the host engine's logits (assets/expected.txt).
  if ! awk -v dtype="$dtype" -v tol="$tol" -f "$mcu/compare.awk" "$mcu/assets/expected.txt" "$log"; then
    fail=1
  fi

  # Figures.
  val() { grep -oE " $1=[0-9]+" "$log" | head -n "${2:-1}" | tail -n 1 | cut -d= -f2; }
  read -r n1 t1 n2 t2 <<< "$(grep ' calib ' "$log" | grep -oE '=[0-9]+' | tr -d = | tr '\n' ' ')"
  ipt=$(ipt_of "$log")
  ticks=$(grep ' image ' "$log" | grep -oE ' ticks=[0-9]+' | cut -d= -f2 | sort -n | tail -1)
  macs=$(val macs)
  insns=$(awk -v t="$ticks" -v r="$ipt" 'BEGIN { printf "%.0f", t * r }')
  ipm=$(awk -v i="$insns" -v m="$macs" 'BEGIN { printf "%.3f", i / m }')
  setup=$(awk -v t="$(grep ' setup ' "$log" | grep -oE 'ticks=[0-9]+' | cut -d= -f2)" -v r="$ipt" 'BEGIN { printf "%.0f", t * r }')
  vt=$(size_of "$elf" .vector_table); text=$(size_of "$elf" .text); ro=$(size_of "$elf" .rodata)
  data=$(size_of "$elf" .data); bss=$(size_of "$elf" .bss); uninit=$(size_of "$elf" .uninit)
  wbytes=$(val weights_bytes)
  summary+=("$(printf '%-4s %9d %9d %8d %9d %8d %6d %8d %8d %8d %10d %10d %6.3f %11d' "$dtype" \
    $((vt + text + ro + data)) "$wbytes" $((vt + text)) $((data + bss + uninit)) "$(val bytes)" "$(val lower_bound)" \
    "$(val stack_used)" "$(val inference_used)" "$(val engine_bytes)" "$insns" "$macs" "$ipm" "$setup")")
  say "calibration ($dtype): loops of $n1 and $n2 instructions took $t1 and $t2 SysTick ticks: $ipt instructions per tick"
done

echo
echo "Cortex-M4F (QEMU mps2-an386, -icount shift=0), batch 1, scalar kernels; bytes unless stated"
printf '%-4s %9s %9s %8s %9s %8s %6s %8s %8s %8s %10s %10s %6s %11s\n' dtype flash weights code ram arena lower setup_stk infer_stk engine instr/inf MACs i/MAC setup_instr
for line in "${summary[@]}"; do echo "$line"; done
echo "(flash = vector table + .text + .rodata + .data; weights = the .tkd file inside .rodata; code = vector table + .text;"
echo " ram = .data + .bss + .uninit (the arena is in .bss); setup_stk / infer_stk = stack high-water of"
echo " WeightFile::parse_unchecked_crc + Engine::from_plan / of the inference loop including its callers' frames;"
echo " engine = size_of::<StaticEngine>(); setup_instr = instructions of that parse + Engine::from_plan)"
if [ -n "${layers:-}" ]; then
  echo
  echo "Per layer kind (src/bin/kernels.rs: each layer of the student through the public kernels, batch 1):"
  echo "$layers"
fi
say "done"
if [ "$fail" -ne 0 ]; then
  echo "mcu check FAILED"
  exit 1
fi
echo "mcu check passed"
