#!/usr/bin/env bash
# A real Slurm cluster on this one machine, with Shifter's SPANK plugin, prolog and epilog:
# Debian's munged, slurmctld and three slurmd (n1, n2, n3 on 127.0.0.1, distinct ports).
#
#   eval "$(tests/slurm/cluster.sh start)"    # prints: export SLURM_CONF=<dir>/slurm.conf
#   sbatch -N3 --image=docker:ubuntu:22.04 job.sh
#   tests/slurm/cluster.sh stop
#
# Run as root (there is no systemd here: every daemon is started in the foreground with `&`, its
# PID recorded under <dir>/pids, and stopped by that PID).  Settings (environment):
#   SHIFTER_SLURM_DIR   state, logs, configs               (default /var/lib/shifter-slurm-test)
#   SHIFTER_PREFIX      Shifter's install prefix (venv)    (default /opt/shifter)
#   SHIFTER_CONFIG      udiRoot.conf the prolog/epilog use (default /etc/shifter/udiRoot.conf)
#   SHIFTER_SLURM_PORT  slurmctld's port; slurmd use the next three (default 17000)
#   SHIFTER_SLURM_PULL  yes: the plugin pulls an unknown --image at submission (default no)
# Needs: slurm-wlm, libslurm-dev, munge, gcc (scripts/install.sh installs them).
set -euo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
DIR=${SHIFTER_SLURM_DIR:-/var/lib/shifter-slurm-test}
PREFIX=${SHIFTER_PREFIX:-/opt/shifter}
CONF=${SHIFTER_CONFIG:-/etc/shifter/udiRoot.conf}
PORT=${SHIFTER_SLURM_PORT:-17000}
NODES=(n1 n2 n3)
HOST=$(hostname -s)

log() { echo "cluster.sh: $*" >&2; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for SECONDS WHAT CMD...
  local limit=$1 what=$2; shift 2
  for _ in $(seq $((limit * 10))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  log "timed out waiting for $what (logs in $DIR/log)"; return 1
}

write_configs() {
  install -d -m 0755 "$DIR" "$DIR/pids" "$DIR/log" "$DIR/ctld"
  for n in "${NODES[@]}"; do install -d -m 0755 "$DIR/spool/$n"; done
  install -d -m 0755 -o munge -g munge "$DIR/munge"
  gcc -O2 -Wall -shared -fPIC -o "$DIR/spank_shifter.so" "$SRC/src/shifter/wlm/slurm/spank_shifter.c"
  chmod 0755 "$DIR/spank_shifter.so"
  local pull=""
  [ "${SHIFTER_SLURM_PULL:-no}" = yes ] && pull=" pull=yes"
  echo "required $DIR/spank_shifter.so python=$PREFIX/venv/bin/python$pull" > "$DIR/plugstack.conf"
  for verb in prolog epilog; do
    cat > "$DIR/$verb.sh" <<EOF
#!/bin/sh
# slurmd runs this as root for every job on the node (slurm.conf ${verb^}=).
export SHIFTER_CONFIG=$CONF
exec $PREFIX/venv/bin/python -I -m shifter.cli.slurm $verb >>$DIR/log/$verb.log 2>&1
EOF
    chmod 0755 "$DIR/$verb.sh"
  done
  cat > "$DIR/slurm.conf" <<EOF
ClusterName=shiftertest
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
PlugStackConfig=$DIR/plugstack.conf
Prolog=$DIR/prolog.sh
Epilog=$DIR/epilog.sh
PrologFlags=Alloc
KillWait=2
MinJobAge=300
InactiveLimit=0
MessageTimeout=20
NodeName=n[1-3] NodeHostname=$HOST NodeAddr=127.0.0.1 Port=[$((PORT + 1))-$((PORT + 3))] CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=n[1-3] Default=YES MaxTime=INFINITE OverSubscribe=EXCLUSIVE State=UP
PartitionName=shared Nodes=n[1-3] Default=NO MaxTime=INFINITE OverSubscribe=NO State=UP
EOF
  chmod 0644 "$DIR/slurm.conf" "$DIR/plugstack.conf"
}

start() {
  if alive "$DIR/pids/slurmctld.pid"; then log "already running (stop it first)"; exit 1; fi
  rm -rf "$DIR/ctld" "$DIR/spool" "$DIR/log"
  write_configs
  export SLURM_CONF=$DIR/slurm.conf
  runuser -u munge -- /usr/sbin/munged -F --socket="$DIR/munge/munge.socket" --pid-file="$DIR/munge/munged.pid" \
    --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed" </dev/null >/dev/null 2>&1 &
  echo $! > "$DIR/pids/munged.pid"
  wait_for 10 munged test -S "$DIR/munge/munge.socket"
  slurmctld -D -i </dev/null >>"$DIR/log/slurmctld.out" 2>&1 &
  echo $! > "$DIR/pids/slurmctld.pid"
  wait_for 20 slurmctld scontrol ping
  for n in "${NODES[@]}"; do
    slurmd -D -N "$n" </dev/null >>"$DIR/log/slurmd.$n.out" 2>&1 &
    echo $! > "$DIR/pids/slurmd.$n.pid"
  done
  wait_for 30 "three idle nodes" sh -c '[ "$(sinfo -h -N -t idle -o %N | sort -u | wc -l)" = 3 ]'
  log "up: munged, slurmctld, slurmd ${NODES[*]} (state and logs in $DIR)"
  echo "export SLURM_CONF=$DIR/slurm.conf"
}

stop() {
  export SLURM_CONF=$DIR/slurm.conf
  if alive "$DIR/pids/slurmctld.pid"; then
    scancel --full --quiet -p debug 2>/dev/null || true
    scancel --full --quiet -p shared 2>/dev/null || true
    # Let the epilogs run (they tear the jobs' containers down) before slurmd goes.
    wait_for 30 "jobs to end" sh -c '[ -z "$(squeue -h -o %i)" ]' || true
  fi
  for name in "${NODES[@]/#/slurmd.}" slurmctld munged; do
    local pidfile="$DIR/pids/$name.pid"
    [ -f "$pidfile" ] || continue
    local pid; pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
  log "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
