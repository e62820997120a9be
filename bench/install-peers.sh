#!/usr/bin/env bash
# Installs the peer backends `bench peers` measures next to gpu-reactor:
#   rust-vmm's vhost-device-gpu (null mode), from crates.io: --locked, or it
#     does not compile (vm-memory version skew), no default features (no
#     virglrenderer / gfxstream system libraries);
#   QEMU's contrib vhost-user-gpu (/usr/lib/qemu/vhost-user-gpu), Debian's
#     qemu-system-gui (tests/run takes it from bookworm-backports, QEMU 10).
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

if [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/vhost-device-gpu" ]; then
    cargo install vhost-device-gpu --version 0.2.0 --locked --no-default-features
fi
if [ ! -x /usr/lib/qemu/vhost-user-gpu ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq qemu-system-gui
fi
echo "peers: ${CARGO_HOME:-$HOME/.cargo}/bin/vhost-device-gpu /usr/lib/qemu/vhost-user-gpu"
