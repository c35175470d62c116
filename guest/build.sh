#!/usr/bin/env bash
# Build the guest assets from Debian's cloud kernel:
#   OUT_DIR/vmlinux         uncompressed ELF kernel (PVH entry)
#   OUT_DIR/initramfs.img   uncompressed newc cpio: /init = AGENT_BINARY + kernel modules
#   OUT_DIR/modules.img     the kernel's whole module tree as a read-only erofs image,
#                           a disk of every VM for modules loaded on demand
#   OUT_DIR/kernel-release  e.g. 6.1.0-56-cloud-amd64
# Work whose inputs did not change is skipped. Needs: apt-get, dpkg-deb, depmod (kmod),
# cpio, python3, lz4 and mkfs.erofs (see scripts/deps.sh). Set FRAKTI_KERNEL_PKG to pin a package.
set -euo pipefail

usage() { echo "usage: $0 AGENT_BINARY OUT_DIR" >&2; exit 2; }
die() { echo "guest/build.sh: $*" >&2; exit 1; }
log() { echo "guest: $*"; }
(($# == 2)) || usage
[[ -f $1 ]] || die "agent binary $1 not found"
agent=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$2/cache"
out=$(cd "$2" && pwd)
cache=$out/cache

# Top-level modules; their dependencies come from modules.dep.
MODULES=(
  virtio_pci_legacy_dev virtio_pci_modern_dev virtio_ring virtio virtio_pci virtio_mmio
  virtio_console virtio_blk failover net_failover virtio_net fuse virtiofs overlay
  libcrc32c erofs vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport
  virtio_mem virtio_rng
)

# stamp_ok NAME KEY: NAME was built from inputs KEY. stamp_set NAME KEY records it.
stamp_ok() { [[ -f $out/.$1.stamp && $(<"$out/.$1.stamp") == "$2" ]]; }
stamp_set() { echo "$2" >"$out/.$1.stamp"; }

# --- 1. kernel package: what linux-image-cloud-amd64 depends on --------------
resolve_pkg() {
  apt-cache depends linux-image-cloud-amd64 2>/dev/null |
    awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}
pkg=${FRAKTI_KERNEL_PKG:-$(resolve_pkg)}
if [[ -z $pkg ]]; then
  log "apt-get update (linux-image-cloud-amd64 unknown)"
  apt-get update -qq
  pkg=$(resolve_pkg)
  [[ -n $pkg ]] || die "cannot resolve linux-image-cloud-amd64"
fi

deb=$(find "$cache" -maxdepth 1 -name "${pkg}_*.deb" | sort | tail -n1)
if [[ -z $deb ]]; then
  log "downloading $pkg"
  download() { (cd "$cache" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >/dev/null); }
  download || { apt-get update -qq && download; } || die "apt-get download $pkg failed"
  deb=$(find "$cache" -maxdepth 1 -name "${pkg}_*.deb" | sort | tail -n1)
fi

root=$cache/root
if ! stamp_ok unpack "${deb##*/}"; then
  log "unpacking ${deb##*/}"
  rm -rf "$root"
  dpkg-deb -x "$deb" "$root"
  bz=$(find "$root/boot" -name 'vmlinuz-*' | head -n1)
  rel=${bz##*/vmlinuz-}
  depmod -b "$root" "$rel"  # the .deb ships no modules.dep; dpkg's postinst would make it
  stamp_set unpack "${deb##*/}"
fi
bz=$(find "$root/boot" -name 'vmlinuz-*' | head -n1)
rel=${bz##*/vmlinuz-}
moddir=$root/lib/modules/$rel
[[ -f $moddir/modules.dep ]] || die "$moddir/modules.dep missing"
echo "$rel" >"$out/kernel-release"

# --- 2. vmlinux --------------------------------------------------------------
key="${deb##*/} $(sha256sum <"$here/extract-vmlinux.py")"
if ! stamp_ok vmlinux "$key" || [[ ! -f $out/vmlinux ]]; then
  python3 "$here/extract-vmlinux.py" "$bz" "$out/vmlinux.tmp"
  mv "$out/vmlinux.tmp" "$out/vmlinux"
  stamp_set vmlinux "$key"
else
  log "vmlinux up to date ($rel)"
fi

# --- 3. the module tree as a read-only disk ----------------------------------
# The guest's modprobe (the agent) mounts it on the kernel's first module
# request; the initramfs keeps only what the boot needs.
key="${deb##*/} erofs-1"
if ! stamp_ok modules "$key" || [[ ! -f $out/modules.img ]]; then
  log "modules.img: $rel's module tree ($(du -sh "$moddir" | cut -f1))"
  rm -f "$out/modules.img.tmp"
  mkfs.erofs --quiet -T0 --all-root -x-1 -U 6d6f6475-6c65-7300-0000-000000000000 \
    "$out/modules.img.tmp" "$moddir"
  mv "$out/modules.img.tmp" "$out/modules.img"
  stamp_set modules "$key"
else
  log "modules.img up to date"
fi

# --- 4. initramfs ------------------------------------------------------------
key="${deb##*/} $(cat "$agent" "$here/build.sh" | sha256sum)"
if stamp_ok initramfs "$key" && [[ -f $out/initramfs.img ]]; then
  log "initramfs up to date"
  exit 0
fi

declare -A path_of deps_of builtin seen
norm() { local b=${1##*/}; b=${b%.ko}; echo "${b//-/_}"; }
while IFS= read -r line; do
  b=${line##*/}; b=${b%.ko}; builtin[${b//-/_}]=1
done <"$moddir/modules.builtin"
while IFS=: read -r path deps; do
  b=${path##*/}; b=${b%.ko}; b=${b//-/_}
  path_of[$b]=$path
  deps_of[$b]=$deps
done <"$moddir/modules.dep"

order=()  # .ko paths, dependencies first
visit() {
  local m=$1 d
  [[ -z ${seen[$m]:-} ]] || return 0
  seen[$m]=1
  if [[ -n ${builtin[$m]:-} ]]; then log "module $m is built in"; return 0; fi
  [[ -n ${path_of[$m]:-} ]] || die "module $m not found in $rel"
  for d in ${deps_of[$m]}; do visit "$(norm "$d")"; done
  order+=("${path_of[$m]}")
}
for m in "${MODULES[@]}"; do visit "${m//-/_}"; done

stage=$out/.initramfs.d
rm -rf "$stage"
mkdir -p "$stage"/{proc,sys,dev,tmp,run,etc,lib/modules}
chmod 1777 "$stage/tmp"
install -m 0755 "$agent" "$stage/init"
echo "$rel" >"$stage/etc/frakti-kernel-version"
for p in "${order[@]}"; do
  cp "$moddir/$p" "$stage/lib/modules/"
  echo "${p##*/}" >>"$stage/lib/modules/load-order"
done
find "$stage" -exec touch -h -d @0 {} +
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort |
  cpio -o -H newc -R 0:0 --reproducible --quiet) >"$out/initramfs.img.tmp"
mv "$out/initramfs.img.tmp" "$out/initramfs.img"
rm -rf "$stage"
stamp_set initramfs "$key"
log "initramfs: ${#order[@]} modules, $(du -h "$out/initramfs.img" | cut -f1) ($rel)"
