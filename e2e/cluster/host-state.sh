#!/usr/bin/env bash
# Prints what the real node may change on this machine, one fact per line, sorted, so that two
# runs can be compared with diff: netfilter rules (nft), ipsets, links, addresses, routes,
# network namespaces, mounts, cgroups, sysctls, host paths, listening ports and processes of the
# node's components. up.sh stores it before the first start; down.sh compares after teardown.
#   e2e/cluster/host-state.sh > before; ...; e2e/cluster/host-state.sh | diff before -
set -uo pipefail
{
  if command -v nft >/dev/null 2>&1; then
    nft list tables 2>/dev/null | awk '{ print "nft-table", $2, $3 }'
    nft list ruleset 2>/dev/null | sed -e 's/^[[:space:]]*//' -e 's/counter packets [0-9]* bytes [0-9]*/counter/' |
      grep -v '^$' | sed 's/^/nft-rule /'
  fi
  ipset list -n 2>/dev/null | sed 's/^/ipset /'
  ip -o link show 2>/dev/null | awk '{ sub(/@.*/, "", $2); sub(/:$/, "", $2); print "link", $2 }'
  ip -o addr show 2>/dev/null | awk '{ print "addr", $2, $4 }'
  ip route show table all 2>/dev/null | sed 's/^/route /'
  ip netns list 2>/dev/null | awk '{ print "netns", $1 }'
  awk '{ print "mount", $2, $3 }' /proc/self/mounts
  for hierarchy in /sys/fs/cgroup/*/; do
    find "${hierarchy}" -mindepth 1 -maxdepth 1 -type d 2>/dev/null | sed 's/^/cgroup /'
  done
  for key in net/ipv4/ip_forward net/ipv4/conf/all/forwarding net/ipv4/conf/all/route_localnet \
    net/ipv6/conf/all/forwarding net/bridge/bridge-nf-call-iptables net/bridge/bridge-nf-call-ip6tables \
    vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops kernel/keys/root_maxkeys \
    kernel/keys/root_maxbytes net/netfilter/nf_conntrack_max net/netfilter/nf_conntrack_tcp_timeout_established \
    net/netfilter/nf_conntrack_tcp_timeout_close_wait fs/inotify/max_user_instances fs/inotify/max_user_watches; do
    [[ -r "/proc/sys/${key}" ]] && printf 'sysctl %s=%s\n' "${key}" "$(<"/proc/sys/${key}")"
  done
  for path in /var/lib/kubelet /var/lib/containerd /run/containerd /opt/containerd /etc/containerd /var/lib/cni \
    /etc/cni /opt/cni /var/log/containers /var/log/pods /run/netns /usr/libexec/kubernetes /etc/kubernetes \
    /run/scaledapp-real-node.owner; do
    [[ -e "${path}" ]] && printf 'path %s\n' "${path}"
  done
  ss -Htlnu 2>/dev/null | awk '{ print "listen", $1, $5 }' |
    grep -E ':(53|5000|10248|10249|10250|10256|10054|10055|20244)$'
  find /proc/[0-9]*/exe -maxdepth 0 -printf '%l\n' 2>/dev/null |
    awk -F/ '$NF ~ /^(containerd|containerd-shim.*|runc|docker-registry|kubelet|kube-proxy|coredns|local-path-provisioner|kube-router|pause)$/ { print "process", $0 }'

} | LC_ALL=C sort -u
exit 0
