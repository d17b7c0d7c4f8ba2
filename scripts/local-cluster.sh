#!/usr/bin/env bash
# A cluster of N "nodes" on this one machine, for testing multi-node runs for
# real: each node is a network namespace with its own address and (on entry)
# its own hostname, TMPDIR and /etc/hosts; the nodes talk over TCP on veth
# links to a bridge in a namespace of their own, so no traffic ever leaves
# the namespaces made here. Open MPI reaches the nodes through an rsh agent
# that enters a node's namespaces instead of ssh. Needs root.
#
#   local-cluster.sh up DIR [--nodes N] [--slots S] [--delay-us D] [--rate R]
#       creates node1..nodeN (10.77.0.K/24), DIR/hostfile (S slots each) and
#       DIR/rsh-agent; --rate limits each node's link (tc units: 10gbit,
#       500mbit), --delay-us delays it (needs the kernel's netem). Running it
#       again with the same options changes nothing; with others, it rebuilds.
#   local-cluster.sh run DIR -- CMD ARGS...
#       runs CMD on node1 with ELFIN_HOSTFILE=DIR/hostfile and Open MPI set
#       up for the cluster (rsh agent, TCP on the cluster's subnet only).
#   local-cluster.sh exec DIR NODE CMD ARGS...   runs CMD on NODE (the rsh agent's way in)
#   local-cluster.sh kill DIR NODE               SIGKILLs every process on NODE
#   local-cluster.sh down DIR                    removes everything up made
#
# Exit status 2: usage errors, not root, no namespaces, or no netem for --delay-us.
set -euo pipefail

SUBNET=10.77.0
SELF=$(readlink -f "$0")

die() { printf 'local-cluster: %s\n' "$*" >&2; exit 2; }
usage() { sed -n '/^#   local-cluster.sh up/,/^# Exit status/p' "$SELF" | sed 's/^# \{0,1\}//' >&2; exit 2; }

[ $# -ge 2 ] || usage
cmd=$1; shift
mkdir -p "$1" 2>/dev/null || die "cannot create the cluster directory $1"
DIR=$(readlink -f "$1"); shift

# Namespaces are global: name them after DIR so that clusters in different
# directories (tests running at once) never meet.
ID=$(printf '%s' "$DIR" | md5sum | cut -c1-8)
ns() { printf 'elfin-%s-%s' "$ID" "$1"; }
HUB=$(ns hub)

need_root() {
  [ "$(id -u)" = 0 ] || die "must run as root (network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN); try sudo"
  command -v ip >/dev/null || die "'ip' not found: install iproute2 (scripts/setup.sh does)"
  command -v unshare >/dev/null || die "'unshare' not found: install util-linux"
}

cluster_namespaces() { ip netns list 2>/dev/null | awk '{print $1}' | grep "^elfin-$ID-" || true; }

node_count() { [ -f "$DIR/cluster.env" ] && sed -n 's/^nodes=//p' "$DIR/cluster.env" || echo 0; }

check_node() {
  local node=$1 n
  n=$(node_count)
  [ "$n" -gt 0 ] || die "no cluster at $DIR: run '$0 up $DIR' first"
  [[ $node =~ ^node([0-9]+)$ ]] && [ "${BASH_REMATCH[1]}" -ge 1 ] && [ "${BASH_REMATCH[1]}" -le "$n" ] \
    || die "no node '$node' in the cluster at $DIR (it has node1..node$n; run 'up' first?)"
  ip netns list | grep -q "^$(ns "$node")\b" || die "$node's namespace is gone; run '$0 up $DIR' again"
}

# Runs "$@" in NODE's network namespace, with its hostname (a fresh UTS
# namespace each time), /etc/hosts (ip netns exec binds /etc/netns/NS/hosts)
# and TMPDIR: Open MPI's session directories are named by host under TMPDIR,
# so nodes sharing one /tmp and one hostname would collide.
on_node() {
  local node=$1; shift
  TMPDIR="$DIR/nodes/$node/tmp" OMPI_MCA_orte_tmpdir_base="$DIR/nodes/$node/tmp" \
    exec ip netns exec "$(ns "$node")" unshare --uts sh -c 'hostname "$0" && exec "$@"' "$node" "$@"
}

down() {
  local n
  for n in $(cluster_namespaces); do
    ip netns pids "$n" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  done
  for n in $(cluster_namespaces); do
    ip netns del "$n" 2>/dev/null || true
    rm -rf "/etc/netns/$n"
  done
  rm -rf "$DIR/nodes" "$DIR/hostfile" "$DIR/rsh-agent" "$DIR/cluster.env"
}

up() {
  local nodes=2 slots=1 delay= rate=
  while [ $# -gt 0 ]; do
    case $1 in
      --nodes) nodes=${2:-}; shift 2 ;;
      --slots) slots=${2:-}; shift 2 ;;
      --delay-us) delay=${2:-}; shift 2 ;;
      --rate) rate=${2:-}; shift 2 ;;
      *) die "up: unknown option '$1' (expected --nodes N --slots S --delay-us D --rate R)" ;;
    esac
  done
  [[ $nodes =~ ^[0-9]+$ ]] && [ "$nodes" -ge 1 ] && [ "$nodes" -le 200 ] || die "--nodes must be 1..200, not '$nodes'"
  [[ $slots =~ ^[0-9]+$ ]] && [ "$slots" -ge 1 ] || die "--slots must be a positive number, not '$slots'"
  [ -z "$delay" ] || [[ $delay =~ ^[0-9]+$ ]] || die "--delay-us must be a whole number of microseconds, not '$delay'"
  [ -z "$rate" ] || [[ $rate =~ ^[0-9]+(\.[0-9]+)?[kmg]?(bit|bps)$ ]] || die "--rate takes tc units (10gbit, 500mbit), not '$rate'"
  need_root
  local config="nodes=$nodes slots=$slots delay=$delay rate=$rate"
  if [ -f "$DIR/cluster.env" ] && grep -qxF "config=$config" "$DIR/cluster.env" \
    && [ "$(cluster_namespaces | wc -l)" -eq $((nodes + 1)) ]; then
    echo "local-cluster: already up at $DIR ($config)"
    return
  fi
  down
  ip netns add "$HUB" 2>/dev/null || die "cannot create network namespaces (ip netns add failed: no CAP_SYS_ADMIN, or a container without them?)"
  ip -n "$HUB" link add br0 type bridge
  ip -n "$HUB" link set br0 up
  local k node hosts="127.0.0.1 localhost"$'\n'
  for k in $(seq 1 "$nodes"); do hosts+="$SUBNET.$k node$k"$'\n'; done
  for k in $(seq 1 "$nodes"); do
    node=node$k
    ip netns add "$(ns $node)"
    ip link add eth0 netns "$(ns $node)" type veth peer name "p$k" netns "$HUB"
    ip -n "$HUB" link set "p$k" master br0 up
    ip -n "$(ns $node)" addr add "$SUBNET.$k/24" dev eth0
    ip -n "$(ns $node)" link set lo up
    ip -n "$(ns $node)" link set eth0 up
    if [ -n "$delay" ]; then
      ip netns exec "$(ns $node)" tc qdisc add dev eth0 root netem delay "${delay}us" ${rate:+rate "$rate"} 2>/dev/null || {
        down
        die "--delay-us needs the kernel's netem qdisc (sch_netem), which this kernel lacks (modprobe sch_netem failed?); drop --delay-us, or use a kernel with netem"
      }
    elif [ -n "$rate" ]; then
      # A burst of 1 ms at the rate (at least 64 KB): a larger one would let
      # a good part of a message through faster than the rate.
      local burst
      burst=$(awk -v r="$rate" 'BEGIN { match(r, /^[0-9.]+/); v = substr(r, 1, RLENGTH); u = substr(r, RLENGTH + 1);
        m = (u ~ /^k/) ? 1e3 : (u ~ /^m/) ? 1e6 : (u ~ /^g/) ? 1e9 : 1; if (u ~ /bit$/) m /= 8;
        b = v * m / 1000; printf "%d", (b < 65536 ? 65536 : b) }')
      ip netns exec "$(ns $node)" tc qdisc add dev eth0 root tbf rate "$rate" burst "$burst" latency 100ms \
        || { down; die "tc could not limit the link to $rate"; }
    fi
    mkdir -p "/etc/netns/$(ns $node)" "$DIR/nodes/$node/tmp"
    printf '%s' "$hosts" >"/etc/netns/$(ns $node)/hosts"
  done
  for k in $(seq 1 "$nodes"); do echo "node$k slots=$slots"; done >"$DIR/hostfile"
  cat >"$DIR/rsh-agent" <<EOF
#!/bin/sh
# Open MPI's rsh agent for the cluster at $DIR: \`rsh-agent NODE COMMAND...\`
# runs the (shell) command on NODE, as ssh would.
node=\$1; shift
exec "$SELF" exec "$DIR" "\$node" sh -c "\$*"
EOF
  chmod +x "$DIR/rsh-agent"
  printf 'config=%s\nnodes=%s\nslots=%s\n' "$config" "$nodes" "$slots" >"$DIR/cluster.env"
  echo "local-cluster: up at $DIR: node1..node$nodes on $SUBNET.0/24, $slots slot(s) each${rate:+, rate $rate}${delay:+, delay ${delay}us}"
}

case $cmd in
  up) up "$@" ;;
  down) need_root; down; echo "local-cluster: down at $DIR" ;;
  run)
    [ "${1:-}" = -- ] && shift
    [ $# -ge 1 ] || die "run: no command given (local-cluster.sh run DIR -- CMD ARGS...)"
    need_root; check_node node1
    export ELFIN_HOSTFILE="$DIR/hostfile" OMPI_MCA_plm_rsh_agent="$DIR/rsh-agent" \
      OMPI_MCA_oob_tcp_if_include="$SUBNET.0/24" OMPI_MCA_btl_tcp_if_include="$SUBNET.0/24" \
      OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    on_node node1 "$@"
    ;;
  exec)
    [ $# -ge 2 ] || die "exec: local-cluster.sh exec DIR NODE CMD ARGS..."
    need_root; check_node "$1"
    on_node "$@"
    ;;
  kill)
    [ $# -eq 1 ] || die "kill: local-cluster.sh kill DIR NODE"
    need_root; check_node "$1"
    ip netns pids "$(ns "$1")" | xargs -r kill -9 2>/dev/null || true
    ;;
  *) usage ;;
esac
