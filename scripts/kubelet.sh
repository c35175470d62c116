#!/usr/bin/env bash
# Builds a kubelet from Debian bookworm's `kubernetes` source package
# (upstream 1.20.2 with its vendor/) with Go 1.23 from bookworm-backports,
# in GOPATH mode, and caches it outside the checkout, keyed by the source
# version, so a machine builds it once. Prints the binary's path.
#
#   scripts/kubelet.sh            # build if not cached, print the path
set -euo pipefail

CACHE=${FRAKTI_KUBELET_CACHE:-/var/cache/frakti}
SOURCES=/etc/apt/sources.list.d/frakti-kubelet.sources

log() { echo "kubelet.sh: $*" >&2; }

if [[ ! -f $SOURCES ]]; then
    log "adding deb-src bookworm and bookworm-backports ($SOURCES)"
    cat > "$SOURCES" <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt-get update -qq >&2
fi

version=$(apt-cache showsrc kubernetes | sed -n 's/^Version: //p' | head -n1)
[[ -n $version ]] || { log "no kubernetes source package in apt"; exit 1; }
out=$CACHE/kubelet-$version
if [[ -x $out/kubelet ]]; then
    echo "$out/kubelet"
    exit 0
fi

GO=/usr/lib/go-1.23/bin/go
if [[ ! -x $GO ]]; then
    log "installing golang-1.23-go from bookworm-backports"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports golang-1.23-go >&2
fi
command -v dpkg-source >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dpkg-dev >&2

work=$CACHE/kubelet-build
rm -rf "$work"
mkdir -p "$work/src" "$work/gopath/src/k8s.io"
log "fetching the kubernetes $version source package"
(cd "$work/src" && apt-get source -qq kubernetes >&2)
tree=$(find "$work/src" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)
[[ -d $tree/vendor ]] || { log "$tree has no vendor/"; exit 1; }
ln -s "$tree" "$work/gopath/src/k8s.io/kubernetes"

log "building kubelet (GOPATH mode; about 12 minutes on 2 cores)"
mkdir -p "$out.tmp"
(
    cd "$work/gopath/src/k8s.io/kubernetes"
    GOPATH=$work/gopath GO111MODULE=off GOFLAGS= GOCACHE=$work/gocache CGO_ENABLED=1 \
        "$GO" build -tags 'selinux notest' -o "$out.tmp/kubelet" ./cmd/kubelet >&2
)
rm -rf "$out"
mv "$out.tmp" "$out"
rm -rf "$work"
echo "$out/kubelet"
