#!/usr/bin/env bash
# The shell half of the kernel matrix (docs/kernel-matrix.md); test/slow/matrix.test.ts
# drives it. Subcommands:
#
#   fetch               resolve the current Debian cloud kernels (5.10 bullseye, 6.1 and
#                       6.12 bookworm), download and unpack the ones not cached under
#                       build/kernels/<package>/ (vmlinuz, modules/, release); prints one
#                       line per kernel: `<label> <dir>`. Offline with a cache: the cache,
#                       and a line `note ...` saying so.
#   initramfs OUT       the base initramfs (busybox, node + libbpf and their libraries,
#                       iproute2's ip and ss, dist/, koffi, our objects) as an uncompressed cpio
#   boot DIR BASE CORPUS
#                       boots the kernel of DIR under qemu (TCG) with BASE + its modules +
#                       the corpus; the in-VM runner prints on the serial console (stdout)
#   host CORPUS         the same runner on this machine's kernel, in a netns of its own
#
# Nothing here touches the machine's apt configuration or the root network namespace:
# apt reads a private sources list and keeps its lists under build/kernels/apt/.
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT=$PWD
# KERNEL_MATRIX_CACHE and KERNEL_MATRIX_MIRROR exist for trying the offline paths (and mirrors).
CACHE=${KERNEL_MATRIX_CACHE:-$ROOT/build/kernels}
MIRROR=${KERNEL_MATRIX_MIRROR:-http://deb.debian.org}
# ifindexes of the runner's two veths ("pod A's" and "pod B's"): the corpus is built for them.
VETH_A=12
VETH_B=13

die() { echo "kernel-matrix: $*" >&2; exit 1; }

# label  sources-list  meta-package (its Depends names the current ABI's image)
KERNELS=(
  "5.10 bullseye linux-image-cloud-amd64"
  "6.1 bookworm linux-image-cloud-amd64"
  "6.12 bookworm linux-image-6.12-cloud-amd64"
)

apt_opts() { # suite
  local d=$CACHE/apt/$1
  echo "-o Dir::Etc::sourcelist=$d/sources.list -o Dir::Etc::sourceparts=- -o Dir::State::Lists=$d/lists -o Dir::Cache=$d/cache -o Acquire::Languages=none -o APT::Get::List-Cleanup=0 -o Debug::NoLocking=1"
}

write_sources() { # suite
  local d=$CACHE/apt/$1 key=/usr/share/keyrings/debian-archive-keyring.gpg
  mkdir -p "$d/lists/partial" "$d/cache/archives/partial"
  {
    echo "deb [signed-by=$key] $MIRROR/debian $1 main"
    echo "deb [signed-by=$key] $MIRROR/debian-security $1-security main"
    [ "$1" = bullseye ] || echo "deb [signed-by=$key] $MIRROR/debian $1-updates main"
  } >"$d/sources.list"
}

# The modules the runner needs where Debian builds them as modules: veth, and the clsact
# qdisc and cls_bpf of netlink TC.
MODULES=(veth sch_ingress cls_bpf)
# Bumped when what a cached image holds changes.
STAMP=complete-v2

# Unpacks vmlinuz and MODULES (decompressed: busybox insmod reads plain modules) of a deb.
unpack() { # deb dir
  local tmp mod f
  tmp=$(mktemp -d "$CACHE/unpack.XXXXXX")
  local pats=('*/vmlinuz-*')
  for mod in "${MODULES[@]}"; do pats+=("*/$mod.ko*"); done
  # tar fails on a pattern that matches nothing (a module built in): judged by what is there.
  dpkg-deb --fsys-tarfile "$1" | tar -x -C "$tmp" --wildcards "${pats[@]}" 2>/dev/null || true
  local vmlinuz
  vmlinuz=$(find "$tmp" -name 'vmlinuz-*' | head -1)
  [ -n "$vmlinuz" ] || die "no vmlinuz in $1"
  rm -rf "$2.new"
  mkdir -p "$2.new/modules"
  cp "$vmlinuz" "$2.new/vmlinuz"
  basename "$vmlinuz" | sed 's/^vmlinuz-//' >"$2.new/release"
  for mod in "${MODULES[@]}"; do
    f=$(find "$tmp" -name "$mod.ko*" | head -1)
    case "$f" in
      *.xz) xz -dc "$f" >"$2.new/modules/$mod.ko" ;;
      *.zst) zstd -qdc "$f" >"$2.new/modules/$mod.ko" ;;
      "") : ;; # built in
      *) cp "$f" "$2.new/modules/$mod.ko" ;;
    esac
  done
  touch "$2.new/$STAMP"
  rm -rf "$tmp" "$2"
  mv "$2.new" "$2"
}

cmd_fetch() {
  mkdir -p "$CACHE"
  local suite ok=() failed=()
  for suite in bullseye bookworm; do
    write_sources "$suite"
    # shellcheck disable=SC2046
    if apt-get $(apt_opts "$suite") -qq --error-on=any update >"$CACHE/apt/$suite/update.log" 2>&1; then ok+=("$suite"); else failed+=("$suite"); fi
  done
  local label meta pkg dir
  for k in "${KERNELS[@]}"; do
    read -r label suite meta <<<"$k"
    pkg=""
    if [[ " ${ok[*]} " == *" $suite "* ]]; then
      # shellcheck disable=SC2046
      pkg=$(apt-cache $(apt_opts "$suite") depends "$meta" 2>/dev/null | awk '/Depends: linux-image-/ { print $2; exit }' || true)
    fi
    if [ -z "$pkg" ]; then
      # Offline: the newest cached image of this series, if any.
      dir=$(ls -d "$CACHE"/linux-image-"$label"[.-]*-cloud-amd64 2>/dev/null | sort -V | tail -1 || true)
      [ -n "$dir" ] && [ -f "$dir/$STAMP" ] || die "cannot resolve $meta from Debian $suite (apt-get update failed: $(tail -2 "$CACHE/apt/$suite/update.log" | tr '\n' ' ')) and no $label image is cached under build/kernels/"
      echo "note Debian $suite unreachable: using the cached $(basename "$dir"), maybe not the current $label image"
      echo "$label $dir"
      continue
    fi
    dir=$CACHE/$pkg
    if [ ! -f "$dir/$STAMP" ]; then
      (
        cd "$CACHE/apt/$suite/cache"
        rm -f ./*.deb
        # shellcheck disable=SC2046
        apt-get $(apt_opts "$suite") -qq download "$pkg" >download.log 2>&1 || die "apt-get download $pkg failed: $(tail -3 download.log | tr '\n' ' ')"
        unpack "$(ls ./*.deb | head -1)" "$dir"
        rm -f ./*.deb
      )
    fi
    echo "$label $dir"
  done
}

# Copies a binary and the shared libraries it needs into the tree at $1.
copy_with_libs() { # tree file...
  local tree=$1 f lib
  shift
  for f in "$@"; do
    mkdir -p "$tree$(dirname "$f")"
    cp -L "$f" "$tree$f"
    for lib in $(ldd "$f" 2>/dev/null | grep -o '/[^ ]*\.so[^ ]*'); do
      mkdir -p "$tree$(dirname "$lib")"
      [ -e "$tree$lib" ] || cp -L "$lib" "$tree$lib"
    done
  done
}

cmd_initramfs() {
  local out=$1 tree
  command -v busybox >/dev/null || die "busybox (busybox-static) is missing"
  command -v cpio >/dev/null || die "cpio is missing"
  tree=$(mktemp -d)
  mkdir -p "$tree"/{bin,sbin,proc,sys,dev,tmp,run,var,matrix/build/tests}
  # ip netns (the in-pod delivery probe's throwaway netns) keeps its names in /var/run/netns.
  ln -s ../run "$tree/var/run"
  cp /bin/busybox "$tree/bin/busybox"
  # sysctl: the in-pod replay's netns (harness/inpod/harness.ts) sets tcp_rfc1337 in it.
  for a in sh mount mkdir cat echo insmod poweroff sleep uname ulimit sysctl; do ln -s busybox "$tree/bin/$a"; done
  local libbpf
  # awk reads to the end: an early exit would kill ldconfig with SIGPIPE, fatal under pipefail.
  libbpf=$(ldconfig -p | awk '/libbpf\.so\.1 .*x86-64/ && !found { print $NF; found = 1 }')
  # iproute2's ss: the in-pod replay names the sockets a lookup selects by their cookies.
  copy_with_libs "$tree" "$(readlink -f "$(command -v node)")" "$(command -v ip)" "$(command -v ss)" "$libbpf"
  [ -e "$tree/usr/bin/node" ] || { mkdir -p "$tree/usr/bin"; cp -L "$(command -v node)" "$tree/usr/bin/node"; }
  cp -r dist "$tree/matrix/dist"
  mkdir -p "$tree/matrix/node_modules/@koromix"
  cp -r node_modules/koffi "$tree/matrix/node_modules/koffi"
  cp -r node_modules/@koromix/koffi-linux-x64 "$tree/matrix/node_modules/@koromix/"
  cp package.json "$tree/matrix/"
  cp build/redirect.bpf.o build/inpod.bpf.o build/xdp.bpf.o "$tree/matrix/build/"
  cp build/tests/broken.bpf.o "$tree/matrix/build/tests/"
  cat >"$tree/init" <<EOF
#!/bin/sh
# The kernel matrix's VM: mount what the runner needs, make its two veths, run it, power off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t bpf bpf /sys/fs/bpf; mount -t tmpfs tmp /tmp
for m in veth sch_ingress cls_bpf; do [ -f /matrix/modules/\$m.ko ] && insmod /matrix/modules/\$m.ko; done
IP=$(command -v ip)
\$IP link set lo up
\$IP link add mxa index $VETH_A type veth peer name mxb index $VETH_B && \$IP link set mxa up && \$IP link set mxb up
echo "MATRIX boot \$(cat /proc/uptime)"
cd /matrix && node dist/harness/matrix/vm-runner.js corpus.json
echo "MATRIX exit \$? \$(cat /proc/uptime)"
poweroff -f
EOF
  chmod +x "$tree/init"
  (cd "$tree" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) >"$out.tmp"
  mv "$out.tmp" "$out"
  rm -rf "$tree"
}

cmd_boot() {
  local dir=$1 base=$2 corpus=$3 extra initrd
  command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 (qemu-system-x86) is missing"
  extra=$(mktemp -d)
  mkdir -p "$extra/matrix"
  cp "$corpus" "$extra/matrix/corpus.json"
  cp -r "$dir/modules" "$extra/matrix/modules"
  initrd=$(mktemp --suffix=.cpio)
  # The kernel unpacks concatenated cpio archives in order; the later ones add files.
  { cat "$base"; (cd "$extra" && find matrix | cpio -o -H newc --quiet); } >"$initrd"
  rm -rf "$extra"
  local rc=0
  timeout 240 qemu-system-x86_64 -machine q35 -cpu max -m 1024 -smp 1 -nographic -no-reboot \
    -nic none -kernel "$dir/vmlinuz" -initrd "$initrd" \
    -append "console=ttyS0 panic=-1 quiet loglevel=3" </dev/null || rc=$?
  rm -f "$initrd"
  return $rc
}

cmd_host() {
  local corpus=$1
  NS=kmx$$-$RANDOM
  ip netns add "$NS"
  trap 'ip netns del "$NS" 2>/dev/null || true' EXIT
  ip -n "$NS" link set lo up
  ip -n "$NS" link add mxa index $VETH_A type veth peer name mxb index $VETH_B
  ip -n "$NS" link set mxa up
  ip -n "$NS" link set mxb up
  ip netns exec "$NS" node dist/harness/matrix/vm-runner.js "$corpus"
}

case "${1:-}" in
  fetch) cmd_fetch ;;
  initramfs) cmd_initramfs "${2:?initramfs OUT}" ;;
  boot) cmd_boot "${2:?boot DIR BASE CORPUS}" "${3:?}" "${4:?}" ;;
  host) cmd_host "${2:?host CORPUS}" ;;
  *) die "usage: $0 fetch | initramfs OUT | boot DIR BASE CORPUS | host CORPUS" ;;
esac
