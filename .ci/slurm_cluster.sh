#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests/test_slurm.py (a real slurmctld and slurmd,
# not a mock). Needs root; installs Debian's slurm-wlm and munge when they are missing.
#
#   bash .ci/slurm_cluster.sh start   # prints SLURM_CONF=<file> (clients need it in their env)
#                                     # and STARTED=1, or STARTED=0 when it was running already
#   bash .ci/slurm_cluster.sh stop    # stops the daemons this script started, removes the folder
#
# The cluster: munged, slurmctld and slurmd with a minimal slurm.conf in $SLURM_CLUSTER_DIR
# (default /tmp/das-slurm-cluster): one node with this machine's cores and memory, one partition
# `debug`, JobRequeue=1, no accounting database. On failure it exits non-zero with one line
# `slurm_cluster: <why>` on stderr (the test prints it as its skip or failure reason).
set -uo pipefail

DIR=${SLURM_CLUSTER_DIR:-/tmp/das-slurm-cluster}
CONF=$DIR/slurm.conf
CTLD_PORT=${SLURM_CLUSTER_PORT:-16817}

die() {
  echo "slurm_cluster: $*" >&2
  exit 1
}

alive() {  # alive PIDFILE: the process named in PIDFILE runs
  [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

node_state() {
  SLURM_CONF=$CONF sinfo -h -o %T 2>/dev/null | head -n 1
}

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
    && command -v sbatch >/dev/null; then
    return 0
  fi
  command -v apt-get >/dev/null || die "slurm-wlm and munge are not installed and there is no apt-get"
  echo "installing slurm-wlm and munge with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q slurm-wlm munge >"$DIR/apt.log" 2>&1; then
    apt-get update -q >>"$DIR/apt.log" 2>&1
    apt-get install -y -q slurm-wlm munge >>"$DIR/apt.log" 2>&1 \
      || die "apt-get install slurm-wlm munge failed (log: $DIR/apt.log)"
  fi
}

start_munge() {
  if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    return 0  # a munged already answers (the system's or ours)
  fi
  if [[ ! -s /etc/munge/munge.key ]]; then
    mungekey --create --force >/dev/null 2>&1 || die "cannot create /etc/munge/munge.key"
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
  fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  mkdir -p "$DIR/munge"
  if id munge >/dev/null 2>&1; then
    chown munge:munge "$DIR/munge"
    su -s /bin/sh munge -c "/usr/sbin/munged --pid-file=$DIR/munge/munged.pid" 2>"$DIR/munged.err" \
      || /usr/sbin/munged --force --pid-file="$DIR/munge/munged.pid" 2>>"$DIR/munged.err" \
      || die "munged does not start: $(tail -n 1 "$DIR/munged.err")"
  else
    /usr/sbin/munged --force --pid-file="$DIR/munge/munged.pid" 2>"$DIR/munged.err" \
      || die "munged does not start: $(tail -n 1 "$DIR/munged.err")"
  fi
  for _ in $(seq 50); do
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  die "munged started but does not answer (see $DIR/munged.err)"
}

write_conf() {
  local host cpus memory_mb
  host=$(hostname -s)
  cpus=$(nproc)
  memory_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  mkdir -p "$DIR/state" "$DIR/spool"
  cat >"$CONF" <<EOF
# One-node test cluster written by .ci/slurm_cluster.sh
ClusterName=dastest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$((CTLD_PORT + 1))
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobRequeue=1
ReturnToService=2
MpiDefault=none
KillWait=30
InactiveLimit=0
MinJobAge=300
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

start() {
  [[ $(id -u) == 0 ]] || die "needs root (it installs packages and runs slurmd), running as $(id -un)"
  mkdir -p "$DIR"
  if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid" && [[ -n $(node_state) ]]; then
    echo "SLURM_CONF=$CONF"
    echo "STARTED=0"  # running already: the caller did not start it and leaves it running
    return 0
  fi
  install_packages
  start_munge
  write_conf
  alive "$DIR/slurmctld.pid" || slurmctld -f "$CONF" -i 2>"$DIR/slurmctld.err" \
    || die "slurmctld does not start: $(tail -n 1 "$DIR/slurmctld.err")"
  alive "$DIR/slurmd.pid" || slurmd -f "$CONF" 2>"$DIR/slurmd.err" \
    || die "slurmd does not start: $(tail -n 1 "$DIR/slurmd.err")"
  local state=""
  for _ in $(seq 60); do
    state=$(node_state)
    if [[ $state == idle* || $state == mixed* ]]; then
      echo "SLURM_CONF=$CONF"
      echo "STARTED=1"
      return 0
    fi
    sleep 0.5
  done
  die "the node did not become idle within 30 s (state '${state:-none}'; logs in $DIR)"
}

stop() {
  local pidfile
  for pidfile in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$DIR/munge/munged.pid"; do
    if alive "$pidfile"; then
      kill "$(cat "$pidfile")" 2>/dev/null || true
    fi
  done
  for _ in $(seq 50); do
    alive "$DIR/slurmd.pid" || alive "$DIR/slurmctld.pid" || break
    sleep 0.1
  done
  rm -rf "$DIR"
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  *) echo "usage: bash .ci/slurm_cluster.sh start|stop" >&2; exit 2 ;;
esac
