#!/usr/bin/env bash
# Cargo runner (`cargo run --release` in examples/mcu_finetune): boots the ELF on QEMU's
# Cortex-M4F board and decodes its defmt output; exits with the firmware's status.
# `-icount shift=0` advances the emulated clock one nanosecond per instruction, so SysTick
# readings count instructions and are deterministic.
set -euo pipefail
elf="$1"
qemu-system-arm -machine mps2-an386 -cpu cortex-m4 -nographic \
  -semihosting-config enable=on,target=native -icount shift=0 -kernel "$elf" \
  | defmt-print -e "$elf"
exit "${PIPESTATUS[0]}"
