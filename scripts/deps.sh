#!/usr/bin/env bash
# Install what frakti's build, guest assets and tests need (Debian bookworm, as root).
# Idempotent: only touches apt/pip when something is missing.
set -euo pipefail

APT_PKGS=(
  qemu-system-x86            # qemu-system-x86_64, /usr/share/qemu/qboot.rom
  qemu-utils                 # qemu-img
  qemu-system-common         # /usr/lib/qemu/virtiofsd: serves pod shared directories
  libseccomp-dev             # the agent links libseccomp statically (libcontainer)
  libelf-dev                 # libbpf (libcontainer's cgroup v2 device filter): libelf, statically in the agent
  zlib1g-dev                 # libbpf's zlib, statically in the agent
  pkg-config
  cpio                       # guest initramfs
  kmod                       # depmod: modules.dep for the guest kernel's modules
  lz4                        # Debian's bzImage payload is LZ4
  erofs-utils                # mkfs.erofs: the guest kernel's module tree as a read-only disk
  xfsprogs                   # disk tests: an xfs filesystem on a loop device
  e2fsprogs                  # disk tests: mkfs.ext4, debugfs
  dosfstools                 # disk tests: mkfs.vfat
  btrfs-progs                # disk tests: mkfs.btrfs
  containernetworking-plugins
  iproute2
  iptables
  iputils-ping               # network tests reach pod IPs
  python3-venv
  busybox-static
  docker-registry            # image tests: the CNCF distribution registry on 127.0.0.1
  apache2-utils              # htpasswd for the registry auth test
  skopeo                     # make bench: reference copy of the pull benchmark image
  openssl                    # image tests: a self-signed certificate for a TLS registry
)

log() { echo "deps: $*"; }

missing=()
for p in "${APT_PKGS[@]}"; do
  [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == 'install ok installed' ]] || missing+=("$p")
done
if ((${#missing[@]})); then
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "apt packages present"
fi

if [[ ! -c /dev/net/tun ]]; then
  log "creating /dev/net/tun"
  mkdir -p /dev/net
  mknod -m 0666 /dev/net/tun c 10 200
fi

# QEMU runs as this unprivileged system user (config key vm_user).
if ! getent passwd frakti-vm > /dev/null; then
  log "creating the system user frakti-vm"
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin frakti-vm
fi
# Each pod's QEMU takes a uid of its own from the user's subordinate range.
if ! grep -q '^frakti-vm:' /etc/subuid 2> /dev/null; then
  log "giving frakti-vm the subordinate uids 1879048192-1879113727"
  usermod --add-subuids 1879048192-1879113727 frakti-vm
fi

PYENV_DIR=${PYENV_DIR:-$(pwd)/target/pyenv}
if [[ ! -x $PYENV_DIR/bin/python ]]; then
  log "creating venv $PYENV_DIR"
  python3 -m venv "$PYENV_DIR"
fi
if ! "$PYENV_DIR/bin/python" -c 'import grpc, grpc_tools, prometheus_client' 2>/dev/null; then
  log "pip install grpcio grpcio-tools prometheus-client"
  "$PYENV_DIR/bin/python" -m pip install -q --disable-pip-version-check grpcio grpcio-tools \
    'prometheus-client>=0.20,<1'
else
  log "python venv ready ($PYENV_DIR)"
fi
log "ok"
