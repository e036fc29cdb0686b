#!/usr/bin/env bash
# Sets up a Debian 12 machine (as root) for ferry: the Debian packages ferry and its tests use,
# then `npm ci` (which also compiles TypeScript to dist/). Node.js 20+ must already be installed.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "setup-debian.sh: run as root (it installs Debian packages)" >&2
  exit 77
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# qemu (x86_64 and aarch64 guests), the debian preset's tools (mmdebstrap, apt, dpkg),
# nix-bin (the host's Nix client and the nix layer), OpenSSH (client, and sshd for the
# forwarding tests), ssh-audit (the SSH front's algorithm test), e2fsprogs/erofs-utils (the
# oracle and the benchmark reference), qemu-user-static (x86_64 builds on an aarch64 guest),
# time (peak RSS in benchmarks), libplist-utils (plistutil: the launchd test's plist round trip).
apt-get install -y -qq \
  qemu-system-x86 qemu-system-arm qemu-utils qemu-user-static ipxe-qemu \
  mmdebstrap nix-bin busybox-static \
  openssh-client openssh-server ssh-audit \
  e2fsprogs erofs-utils \
  zstd xz-utils cpio kmod iproute2 ca-certificates python3 perl time \
  libplist-utils >/dev/null
mkdir -p /run/sshd
node --version
npm ci --no-audit --no-fund
