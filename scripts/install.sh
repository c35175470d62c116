#!/usr/bin/env bash
# Installs what `make build` made, or removes what an install put there.
#
#   scripts/install.sh install     # PREFIX (default /usr/local), DESTDIR
#   scripts/install.sh uninstall
#
# install: frakti and frakti-monitor into $PREFIX/bin, the guest assets into
# $PREFIX/share/frakti/guest/, frakti.service into $PREFIX/lib/systemd/system/,
# /etc/frakti/config.toml (`frakti config default`) only if there is none,
# and /etc/cni/net.d/10-frakti.conflist (`frakti config cni`) only if that
# directory holds no network. Every file and every directory it created is
# recorded, with the file's sha256, in $PREFIX/share/frakti/install-manifest.
# uninstall removes exactly those: a recorded file changed since (an edited
# config) is kept and named, a created directory goes only once empty.
set -euo pipefail

PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
BUILD=${BUILD:-target/release}
GUEST=${GUEST:-target/guest}
MANIFEST=$PREFIX/share/frakti/install-manifest

log() { echo "install: $*"; }
die() { echo "install: $*" >&2; exit 1; }

# manifest lines: "file <sha256> <path>" and "dir - <path>" (paths without DESTDIR)
declare -a entries=()
declare -A previous=()

load_previous() {
    [[ -f $DESTDIR$MANIFEST ]] || return 0
    local kind sum path
    while read -r kind sum path; do
        previous[$path]="$kind $sum $path"
    done < "$DESTDIR$MANIFEST"
}

# Makes directory $1 (and its parents), recording the ones it created.
make_dir() {
    local dir=$1 missing=() d
    d=$dir
    while [[ $d != / && ! -d $DESTDIR$d ]]; do
        missing=("$d" "${missing[@]}")
        d=$(dirname "$d")
    done
    for d in "${missing[@]}"; do
        mkdir -m 0755 "$DESTDIR$d"
        entries+=("dir - $d")
    done
    # A directory an earlier install created stays ours.
    for d in $(ancestors "$dir"); do
        if [[ -n ${previous[$d]:-} && ${previous[$d]} == dir* ]]; then
            record_once "${previous[$d]}"
        fi
    done
}

ancestors() {
    local d=$1
    while [[ $d != / && $d != . ]]; do
        echo "$d"
        d=$(dirname "$d")
    done
}

record_once() {
    local e
    for e in "${entries[@]}"; do
        [[ $e == "$1" ]] && return 0
    done
    entries+=("$1")
}

# Installs file $1 as $2 with mode $3.
put() {
    local src=$1 dst=$2 mode=$3
    make_dir "$(dirname "$dst")"
    install -m "$mode" "$src" "$DESTDIR$dst"
    entries+=("file $(sha256sum < "$DESTDIR$dst" | cut -d' ' -f1) $dst")
}

# Writes stdin to $1 (mode $2) unless $1 exists; a copy an earlier install
# made stays recorded.
put_new() {
    local dst=$1 mode=$2 tmp
    if [[ -e $DESTDIR$dst ]]; then
        make_dir "$(dirname "$dst")"
        if [[ -n ${previous[$dst]:-} ]]; then
            record_once "${previous[$dst]}"
        else
            log "kept $DESTDIR$dst (not ours)"
        fi
        cat > /dev/null
        return 0
    fi
    tmp=$(mktemp)
    cat > "$tmp"
    put "$tmp" "$dst" "$mode"
    rm -f "$tmp"
}

has_cni_network() {
    compgen -G "$DESTDIR/etc/cni/net.d/*.conflist" > /dev/null ||
        compgen -G "$DESTDIR/etc/cni/net.d/*.conf" > /dev/null ||
        compgen -G "$DESTDIR/etc/cni/net.d/*.json" > /dev/null
}

do_install() {
    local f
    for f in "$BUILD/frakti" "$BUILD/frakti-monitor" "$GUEST/vmlinux" "$GUEST/initramfs.img"; do
        [[ -f $f ]] || die "$f is missing: run \`make build\` first"
    done
    [[ -z $DESTDIR ]] || mkdir -p "$DESTDIR"
    # QEMU runs as this unprivileged system user (vm_user); it is an account,
    # not a file, so uninstall leaves it.
    if [[ -z $DESTDIR ]] && ! getent passwd frakti-vm > /dev/null; then
        useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin frakti-vm
        log "created the system user frakti-vm"
    fi
    # Each pod's QEMU takes a uid of its own from the user's subordinate range.
    if [[ -z $DESTDIR ]] && ! grep -q '^frakti-vm:' /etc/subuid 2> /dev/null; then
        usermod --add-subuids 1879048192-1879113727 frakti-vm
        log "gave frakti-vm the subordinate uids 1879048192-1879113727"
    fi
    load_previous
    put "$BUILD/frakti" "$PREFIX/bin/frakti" 0755
    put "$BUILD/frakti-monitor" "$PREFIX/bin/frakti-monitor" 0755
    for f in vmlinux initramfs.img modules.img kernel-release; do
        [[ -f $GUEST/$f ]] && put "$GUEST/$f" "$PREFIX/share/frakti/guest/$f" 0644
    done
    local unit
    unit=$(mktemp)
    sed "s|^ExecStart=.*|ExecStart=$PREFIX/bin/frakti|" deploy/frakti.service > "$unit"
    put "$unit" "$PREFIX/lib/systemd/system/frakti.service" 0644
    rm -f "$unit"
    # The installed binary says what its defaults are where it lies.
    put_new /etc/frakti/config.toml 0644 < <("$DESTDIR$PREFIX/bin/frakti" config default)
    if has_cni_network && [[ -z ${previous[/etc/cni/net.d/10-frakti.conflist]:-} ]]; then
        log "kept the CNI networks in $DESTDIR/etc/cni/net.d"
    else
        put_new /etc/cni/net.d/10-frakti.conflist 0644 < <("$BUILD/frakti" config cni)
    fi
    make_dir "$(dirname "$MANIFEST")"
    printf '%s\n' "${entries[@]}" > "$DESTDIR$MANIFEST"
    log "installed under ${DESTDIR:-/} (prefix $PREFIX); manifest $DESTDIR$MANIFEST"
    if [[ -z $DESTDIR && -d /run/systemd/system ]] && command -v systemctl > /dev/null; then
        systemctl daemon-reload
        log "systemd: \`systemctl enable --now frakti\` starts it"
    fi
}

do_uninstall() {
    [[ -f $DESTDIR$MANIFEST ]] || die "no $DESTDIR$MANIFEST: nothing installed under prefix $PREFIX"
    local kind sum path dirs=()
    while read -r kind sum path; do
        case $kind in
            file)
                [[ -e $DESTDIR$path ]] || continue
                if [[ $(sha256sum < "$DESTDIR$path" | cut -d' ' -f1) == "$sum" ]]; then
                    rm -f "$DESTDIR$path"
                else
                    log "kept $DESTDIR$path: changed since it was installed"
                fi
                ;;
            dir) dirs+=("$path") ;;
        esac
    done < "$DESTDIR$MANIFEST"
    rm -f "$DESTDIR$MANIFEST"
    # Deepest first; only directories left empty.
    local d
    for d in $(printf '%s\n' "${dirs[@]}" | awk '{ print length, $0 }' | sort -rn | cut -d' ' -f2-); do
        rmdir "$DESTDIR$d" 2> /dev/null || true
    done
    log "removed what was installed under ${DESTDIR:-/} (prefix $PREFIX)"
    if [[ -z $DESTDIR && -d /run/systemd/system ]] && command -v systemctl > /dev/null; then
        systemctl daemon-reload
    fi
}

case ${1:-} in
    install) do_install ;;
    uninstall) do_uninstall ;;
    *) die "usage: $0 install|uninstall" ;;
esac
