# Sourced (not run) by examples/mcu/check.sh and examples/mcu_finetune/check.sh, the two QEMU
# firmware checks:
#
#   firmware_tools [COMMAND...]   installs what is missing: the thumbv7em-none-eabihf target,
#                                 Debian's qemu-system-arm and binutils (readelf), defmt-print
#                                 (`cargo install defmt-print --locked`), and the Debian package
#                                 of each extra COMMAND (e.g. python3)
#   firmware_cargo ARGS...        cargo ARGS for a firmware crate, with its source paths remapped
#
# The remap: the panic locations in a firmware's .rodata hold the full source paths of tinykd
# (a path dependency) and of the registry crates, so without it the flash total grows by ~13 B
# per character of the checkout's path (13 such paths in examples/mcu; and by ~3 B per character
# of CARGO_HOME's). `--remap-path-prefix` turns them
# into `tinykd/...` and `cargo-home/...`; it is passed with `--config`, which cargo appends to
# the rustflags of the crate's .cargo/config.toml (the linker scripts stay).
firmware_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"

firmware_tools() {
  rustup target list --installed | grep -qx thumbv7em-none-eabihf || rustup target add thumbv7em-none-eabihf
  local need=() cmd
  command -v qemu-system-arm >/dev/null || need+=(qemu-system-arm)
  command -v readelf >/dev/null || need+=(binutils)
  for cmd in "$@"; do
    command -v "$cmd" >/dev/null || need+=("$cmd")
  done
  if [ ${#need[@]} -gt 0 ]; then
    echo "[firmware tools] installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  fi
  export PATH="$HOME/.cargo/bin:$PATH"
  if ! command -v defmt-print >/dev/null; then
    local t0
    t0=$(date +%s)
    cargo install defmt-print --locked --quiet
    echo "[firmware tools] installed defmt-print in $(( $(date +%s) - t0 ))s"
  fi
}

firmware_cargo() {
  # Cargo forms the registry paths from CARGO_HOME as given and the checkout's from the
  # physical working directory (hence `pwd -P` above).
  local home="${CARGO_HOME:-$HOME/.cargo}"
  cargo --config "target.thumbv7em-none-eabihf.rustflags = [\"--remap-path-prefix=$firmware_root=tinykd\", \"--remap-path-prefix=$home=cargo-home\"]" "$@"
}
