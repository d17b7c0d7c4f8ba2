#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for tests and trying out job
# scripts: munged, slurmctld and slurmd from Debian's packages (installed by
# scripts/setup.sh), without systemd, every file (config, state, spool, logs,
# pid files, the munge socket and key) inside DIR, on ports of its own.
#
#   scripts/local-slurm.sh up DIR     start it (nothing to do if it runs)
#   scripts/local-slurm.sh down DIR   stop the daemons it started (by their pid files)
#
# After `up`, `source DIR/env` points sbatch, srun, scontrol and scancel at
# it (SLURM_CONF). The node is this host, in partition `debug`, with at
# least 2 CPUs (more tasks than cores are allowed: CPU tests oversubscribe).
# Needs root: slurmd runs jobs as any user, and munged runs as user munge.
set -euo pipefail

say() { printf 'local-slurm: %s\n' "$*"; }
die() { printf 'local-slurm: error: %s\n' "$*" >&2; exit 1; }

usage() { die "usage: $0 up|down DIR"; }
[ $# -eq 2 ] || usage
action=$1
mkdir -p "$2"
DIR=$(cd "$2" && pwd)

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# The daemons in the order they start; `down` stops them in reverse.
PIDS=("$DIR/munge/munged.pid" "$DIR/slurmctld.pid" "$DIR/slurmd.pid")

down() {
  local i pid jobs
  # Jobs still running end first, so that no slurmstepd outlives its slurmd.
  if alive "$DIR/slurmctld.pid"; then
    jobs=$(SLURM_CONF="$DIR/slurm.conf" squeue -h -o %i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      SLURM_CONF="$DIR/slurm.conf" scancel --full $jobs 2>/dev/null || true
      for _ in $(seq 100); do
        [ -z "$(SLURM_CONF="$DIR/slurm.conf" squeue -h -o %i 2>/dev/null)" ] && break
        sleep 0.1
      done
    fi
  fi
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    alive "${PIDS[i]}" || continue
    pid=$(cat "${PIDS[i]}")
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { say "$(basename "${PIDS[i]}" .pid) ($pid) ignores SIGTERM; killing it"; kill -9 "$pid"; }
  done
  say "down ($DIR)"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

write_conf() {
  local host cpus ctld_port slurmd_port
  host=$(hostname -s)
  cpus=$(nproc); [ "$cpus" -ge 2 ] || cpus=2
  ctld_port=$(free_port); slurmd_port=$(free_port)
  while [ "$slurmd_port" = "$ctld_port" ]; do slurmd_port=$(free_port); done
  cat >"$DIR/slurm.conf" <<EOF
# Written by scripts/local-slurm.sh: a one-node cluster inside $DIR.
ClusterName=elfin-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups without systemd: processes are tracked through /proc.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# The end of every job (state, exit status) is recorded here.
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=pmix
ReturnToService=2
# A node with more CPUs in the config than it has is not drained for it.
SlurmdParameters=config_overrides
# A stopped job's steps get KillWait seconds after SIGTERM before SIGKILL
# (Slurm's default, and what most clusters keep).
KillWait=30
MinJobAge=600
SchedulerType=sched/backfill
SchedulerParameters=defer_batch
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
  printf 'export SLURM_CONF=%q\n' "$DIR/slurm.conf" >"$DIR/env"
}

up() {
  [ "$(id -u)" = 0 ] || die "must run as root (slurmd starts jobs as any user; munged runs as user munge); try: sudo $0 up $DIR"
  local cmd
  for cmd in munged mungekey slurmctld slurmd sinfo python3; do
    command -v "$cmd" >/dev/null || die "$cmd not found: run scripts/setup.sh (installs slurm-wlm and munge)"
  done
  id munge >/dev/null 2>&1 || die "no user munge: run scripts/setup.sh (the munge package makes it)"
  if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid" && alive "$DIR/munge/munged.pid"; then
    say "already up ($DIR); source $DIR/env"
    return
  fi
  down >/dev/null
  # munged (as user munge) must reach its own folder.
  chmod 755 "$DIR"
  mkdir -p "$DIR/munge" "$DIR/state" "$DIR/spool" "$DIR/log"
  chown munge:munge "$DIR/munge"
  chmod 700 "$DIR/munge"
  [ -s "$DIR/munge/munge.key" ] || runuser -u munge -- mungekey --create --keyfile="$DIR/munge/munge.key"
  runuser -u munge -- munged --force \
    --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed" \
    || die "munged did not start; see $DIR/munge/munged.log"
  write_conf
  export SLURM_CONF="$DIR/slurm.conf"
  slurmctld -i -f "$SLURM_CONF" || die "slurmctld did not start; see $DIR/log/slurmctld.log"
  slurmd -f "$SLURM_CONF" || die "slurmd did not start; see $DIR/log/slurmd.log"
  local state=""
  for _ in $(seq 300); do
    state=$(sinfo -h -o %t 2>/dev/null || true)
    case "$state" in idle* | mix* | alloc*) break ;; esac
    sleep 0.1
  done
  case "$state" in
    idle* | mix* | alloc*) say "up: node $(hostname -s) is $state; source $DIR/env" ;;
    *) die "the node did not come up (sinfo says '${state:-nothing}'); logs: $DIR/log/slurmctld.log, $DIR/log/slurmd.log" ;;
  esac
}

case "$action" in
  up) up ;;
  down) down ;;
  *) usage ;;
esac
