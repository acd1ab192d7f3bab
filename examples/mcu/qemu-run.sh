#!/usr/bin/env bash
# Cargo runner for the firmware (`cargo run --release [--features f16]` in examples/mcu): boots
# the ELF on QEMU's Cortex-M4F board and decodes its defmt output; exits with the firmware's
# status. `-icount shift=0` makes the emulated clock advance one nanosecond per instruction, so
# SysTick readings are deterministic.
set -euo pipefail
elf="$1"
qemu-system-arm -machine mps2-an386 -cpu cortex-m4 -nographic \
  -semihosting-config enable=on,target=native -icount shift=0 -kernel "$elf" \
  | defmt-print -e "$elf"
exit "${PIPESTATUS[0]}"
