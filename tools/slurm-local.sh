#!/usr/bin/env bash
# A single-node SLURM cluster on localhost, for tests/test_slurm.py and for trying profiles/slurm by hand.
#
#   tools/slurm-local.sh up     install the Debian packages if missing, start munged, write /etc/slurm/slurm.conf,
#                               start slurmctld + slurmd and wait until the node is idle
#   tools/slurm-local.sh down   stop the daemons (by their pid files) and remove /etc/slurm/slurm.conf
#
# Recipe and pitfalls: /work/shared/docs/slurm_local.md (Steps 0-4 and 6). Debian 12, needs root, no systemd.
# SLURM_BASE (default /tmp/ppdb-lc-slurm) holds state, logs (log/slurmctld.log) and pid files; use the same value
# for `up` and `down`. `up` starts from a clean state (job ids begin at 1, empty logs).
#
# Exit codes: 0 ok; 3 the SLURM packages are missing and cannot be installed (not root, apt failed) - callers may
# treat this as "SLURM unavailable"; 1 anything else (daemons did not start, another cluster is running, ...).
#
# The generated config keeps finished jobs in squeue for MinJobAge=600 s: Snakemake's SLURM profile must use
# `slurm-status-command: squeue` (no slurmdbd, so sacct does not work) and
# `slurm-init-seconds-before-status-checks` <= MinJobAge / 3.
set -euo pipefail

SLURM_BASE="${SLURM_BASE:-/tmp/ppdb-lc-slurm}"
CONF=/etc/slurm/slurm.conf
PACKAGES=(slurmctld slurmd slurm-client munge)
UNAVAILABLE=3

say() { printf 'slurm-local: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

installed() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null
}

install_packages() {   # Step 1
    installed && return 0
    if ! command -v apt-get >/dev/null; then
        say "ERROR: SLURM is not installed and there is no apt-get to install ${PACKAGES[*]}"
        exit "$UNAVAILABLE"
    fi
    say "installing ${PACKAGES[*]} with apt-get"
    local log="$SLURM_BASE/apt.log"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${PACKAGES[@]}"; } >"$log" 2>&1; then
        tail -n 20 "$log" >&2 || true
        say "ERROR: apt-get could not install ${PACKAGES[*]} (full output: $log)"
        exit "$UNAVAILABLE"
    fi
    installed || { say "ERROR: apt-get succeeded but slurmctld/slurmd/sbatch/munged are not on PATH"; exit "$UNAVAILABLE"; }
}

start_munge() {   # Step 2
    if [ ! -s /etc/munge/munge.key ]; then   # the munge postinst normally creates it
        mungekey --create --keyfile=/etc/munge/munge.key --force
        chown munge:munge /etc/munge/munge.key
        chmod 600 /etc/munge/munge.key
    fi
    mkdir -p /run/munge
    chown munge:munge /run/munge
    chmod 755 /run/munge
    if pid_alive /run/munge/munged.pid; then
        say "munged already running (pid $(cat /run/munge/munged.pid)), reusing it"
    else
        runuser -u munge -- /usr/sbin/munged
        touch "$SLURM_BASE/run/munged.ours"   # `down` stops munged only if `up` started it
    fi
    munge -n | unmunge >/dev/null || die "munge self-test failed (munge -n | unmunge)"
}

write_conf() {   # Step 3 (the path must be /etc/slurm/slurm.conf: SLURM_CONF is deleted inside jobs)
    mkdir -p /etc/slurm
    local host mem nodeline
    host=$(hostname -s)
    mem=$(( $(free -m | awk '/^Mem:/{print $2}') * 9 / 10 ))
    nodeline=$(slurmd -C | head -1 | sed -E "s/RealMemory=[0-9]+/RealMemory=${mem}/")
    [[ "$nodeline" == NodeName=* ]] || die "unexpected output of 'slurmd -C': $nodeline"
    cat >"$CONF" <<CONF
# Written by $(realpath "$0") up (SLURM_BASE=${SLURM_BASE}); removed by 'down'.
ClusterName=localcluster
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=${SLURM_BASE}/state/ctld
SlurmdSpoolDir=${SLURM_BASE}/state/d
SlurmctldPidFile=${SLURM_BASE}/run/slurmctld.pid
SlurmdPidFile=${SLURM_BASE}/run/slurmd.pid
SlurmctldLogFile=${SLURM_BASE}/log/slurmctld.log
SlurmdLogFile=${SLURM_BASE}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
MinJobAge=600
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
Waittime=0
${nodeline} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

cancel_jobs() {   # jobs still queued/running on this cluster (e.g. after an interrupted test): their steps
    local ids   # would outlive slurmd
    pid_alive "$SLURM_BASE/run/slurmctld.pid" && [ -e "$CONF" ] || return 0
    ids=$(squeue -h -t PENDING,RUNNING,CONFIGURING,COMPLETING -o '%i' 2>/dev/null | tr '\n' ' ' || true)
    [ -n "${ids// /}" ] || return 0
    say "cancelling jobs still on the cluster: $ids"
    # shellcheck disable=SC2086
    scancel $ids 2>/dev/null || true
    for _ in $(seq 1 30); do
        [ -z "$(squeue -h -t PENDING,RUNNING,CONFIGURING,COMPLETING -o '%i' 2>/dev/null)" ] && break
        sleep 0.5
    done
}

stop_daemons() {   # Step 6, first half: kill by pid, wait until gone
    local f pid pids=()
    cancel_jobs
    local files=("$SLURM_BASE/run/slurmd.pid" "$SLURM_BASE/run/slurmctld.pid")
    [ -e "$SLURM_BASE/run/munged.ours" ] && files+=(/run/munge/munged.pid)
    for f in "${files[@]}"; do
        if [ -s "$f" ]; then
            pid=$(cat "$f")   # read first: the daemons delete their pid file on exit
            if kill "$pid" 2>/dev/null; then pids+=("$pid"); say "stopped $(basename "$f" .pid) (pid $pid)"; fi
        fi
    done
    for _ in $(seq 1 50); do
        local alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.2
    done
    rm -f "$SLURM_BASE/run/munged.ours"
}

cmd_up() {
    if [ "$(id -u)" != 0 ]; then
        say "ERROR: needs root (installs ${PACKAGES[*]} with apt, writes $CONF, starts munged/slurmctld/slurmd)"
        exit "$UNAVAILABLE"
    fi
    mkdir -p "$SLURM_BASE"   # Step 0
    install_packages
    # a cluster left over from an earlier `up` with the same SLURM_BASE: stop it and start afresh
    stop_daemons
    if pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; then
        die "slurmctld/slurmd already running and not started from SLURM_BASE=$SLURM_BASE (pids: $(pgrep -x -d, 'slurmctld|slurmd')); stop that cluster first"
    fi
    rm -rf "$SLURM_BASE/state" "$SLURM_BASE/log"
    mkdir -p "$SLURM_BASE"/{state/ctld,state/d,log,run}
    start_munge
    write_conf
    /usr/sbin/slurmctld   # Step 4: both daemonize
    /usr/sbin/slurmd
    local state=""
    for _ in $(seq 1 120); do
        state=$(sinfo -h -o '%T' 2>/dev/null | head -1 || true)
        [[ "$state" =~ ^(idle|mixed|allocated)$ ]] && break
        sleep 0.5
    done
    if ! [[ "$state" =~ ^(idle|mixed|allocated)$ ]]; then
        tail -n 20 "$SLURM_BASE/log/slurmctld.log" "$SLURM_BASE/log/slurmd.log" >&2 2>/dev/null || true
        die "the node did not become idle within 60 s (sinfo state: '${state:-none}'); logs in $SLURM_BASE/log"
    fi
    srun -t 1 true || die "smoke test 'srun -t 1 true' failed; logs in $SLURM_BASE/log"
    say "up: node $(sinfo -h -o '%N %c CPUs %m MB' | head -1), partition debug; SLURM_BASE=$SLURM_BASE"
}

cmd_down() {
    stop_daemons
    rm -f "$CONF"   # a stale slurm.conf with dead daemons makes every scontrol call block ~9 s
    say "down: daemons stopped, $CONF removed (state and logs kept in $SLURM_BASE)"
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    *) echo "usage: SLURM_BASE=DIR $0 up|down" >&2; exit 2 ;;
esac
