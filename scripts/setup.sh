#!/usr/bin/env bash
# Makes a fresh Debian machine ready to build, test and demo ambient-redirect:
# Debian packages, npm packages, a bpffs at /sys/fs/bpf, and the build.
# Idempotent, and quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "setup: $*" >&2; exit 1; }

[ "$(uname -s)" = Linux ] || die "needs Linux (network namespaces, BPF); this is $(uname -s)"
[ "$(id -u)" = 0 ] || die "needs root: it installs packages, mounts bpffs and loads BPF programs (try: sudo make ...)"
command -v node >/dev/null || die "needs Node.js >= 20 on PATH"
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' || die "needs Node.js >= 20, found $(node --version)"

# Debian packages the build, the tests, the demo and the bench use: every command the code
# spawns comes from one of these or from the base image (test/unit/spawned-commands.test.ts
# keeps this list true).
packages=(clang llvm libbpf-dev linux-libc-dev bpftool iproute2 iptables nftables ipset procps util-linux iputils-ping make
  qemu-system-x86 busybox-static cpio xz-utils  # the kernel matrix (docs/kernel-matrix.md)
  libclang-rt-14-dev)  # the plugin's ASan+UBSan build for the CNI fuzz run (docs/cni.md)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  log=$(mktemp)
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    die "could not install ${missing[*]} (output above)"
  fi
  rm -f "$log"
fi

# bpffs is not mounted on a fresh machine.
if ! mountpoint -q /sys/fs/bpf; then
  echo "setup: mounting bpffs at /sys/fs/bpf"
  mount -t bpf bpf /sys/fs/bpf
fi

# npm packages and the build (make only redoes what changed).
make --no-print-directory -s build >/dev/null
