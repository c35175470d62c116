#!/usr/bin/env bash
# What a test run could leave behind on this host, one sorted line per item:
# VMM processes, network namespaces, links, mounts, iptables rules, IPAM
# leases and pod cgroups.
#
#   scripts/host-inventory.sh > before        # record
#   scripts/host-inventory.sh --since before  # exit 1 listing what was added
#   scripts/host-inventory.sh --remove-networking-since before
#       # removes the bridges and iptables rules and chains added since
#
# It never kills a process nor removes anything else.
# No pipefail: a source that is absent (no iptables tables yet, no IPAM
# directory) is an empty list, not an error.
set -eu

inventory() {
  # Processes: QEMU and virtiofsd, with their pid (a zombie counts too).
  local pid comm
  for dir in /proc/[0-9]*; do
    pid=${dir#/proc/}
    comm=$(cat "$dir/comm" 2>/dev/null) || continue
    case $comm in
      qemu-system-*|virtiofsd) echo "process $pid $comm" ;;
    esac
  done
  # Network namespaces, named and by bind mount.
  { ip netns list 2>/dev/null || true; } | awk '{print "netns " $1}'
  # Links of the root namespace: name and kind.
  { ip -o -d link show 2>/dev/null || true; } | awk -F': ' '{split($2, n, "@"); kind = "device"
    if (match($0, / (bridge|veth|tun|tap|vxlan|dummy|macvtap|ipvlan|macvlan) /)) kind = substr($0, RSTART + 1, RLENGTH - 2)
    print "link " n[1] " " kind}'
  # Mount points of the host's mount namespace.
  awk '{print "mount " $5}' /proc/1/mountinfo
  # iptables rules and user chains by table, without counters (a
  # built-in chain's policy line only says that the table is loaded).
  if command -v iptables-save >/dev/null; then
    { iptables-save 2>/dev/null || true; } | awk '
      /^\*/ { table = substr($0, 2); next }
      /^:(INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) / { next }
      /^(-A|:)/ { sub(/ \[[0-9]+:[0-9]+\]$/, ""); print "iptables " table " " $0 }'
  fi
  # host-local IPAM leases.
  find /var/lib/cni/networks -mindepth 2 -maxdepth 2 -type f ! -name 'last_reserved_ip*' ! -name lock \
    2>/dev/null | sed 's/^/ipam-lease /'
  # cgroups of pods: frakti's own parent's children, and tests' parents.
  find /sys/fs/cgroup -mindepth 2 -maxdepth 5 -type d \( -name 'frakti?*' -o -path '*/frakti/*' \) \
    2>/dev/null | sed 's/^/cgroup /'
}

# The node networking a test run's CNI networks made and the plugins never
# remove (a network's bridge, portmap's chains), when it was not there
# before: rules first, then chains, then bridges.
remove_networking() {
  local added line table rest
  added=$(comm -13 <(sort -u "$1") <(inventory | sort -u))
  while read -r line; do
    [[ $line == "iptables "*" -A "* ]] || continue
    read -r _ table rest <<<"$line"
    eval "iptables -w -t $table -D ${rest#-A }" || true
  done <<<"$added"
  while read -r line; do
    [[ $line == "iptables "*" :"* ]] || continue
    read -r _ table rest <<<"$line"
    rest=${rest#:}
    iptables -w -t "$table" -X "${rest%% *}" || true
  done <<<"$added"
  while read -r line; do
    [[ $line == "link "*" bridge" ]] || continue
    read -r _ rest _ <<<"$line"
    ip link delete "$rest" type bridge || true
  done <<<"$added"
}

if [[ ${1:-} == --remove-networking-since ]]; then
  remove_networking "${2:?usage: host-inventory.sh --remove-networking-since FILE}"
elif [[ ${1:-} == --since ]]; then
  before=${2:?usage: host-inventory.sh --since FILE}
  added=$(comm -13 <(sort -u "$before") <(inventory | sort -u))
  if [[ -n $added ]]; then
    echo "the test run left these behind on the host:" >&2
    echo "$added" >&2
    exit 1
  fi
  echo "host inventory: nothing left behind ($(sort -u "$before" | wc -l) items before and after)"
else
  inventory | sort -u
fi
