#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests/test_slurm.py (and for trying the slurm
# profile by hand). Usage: .ci/slurm-cluster.sh up|down|status
#
# up      installs slurm-wlm and munge with apt if they are missing, writes /etc/slurm/slurm.conf
#         and gres.conf, starts munged (unless one already answers), slurmctld and slurmd, and
#         waits until the node is idle. Does nothing if the cluster is already up.
# down    cancels what is still queued there, stops exactly the daemons `up` started and removes
#         the config it wrote.
# status  exits 0 when the cluster answers, and prints it.
#
# The config goes where SLURM commands look by default, /etc/slurm: the slurm executor plugin
# drops SLURM_* variables (SLURM_CONF too) before it calls srun inside a job. `up` refuses to
# overwrite a slurm.conf it did not write. State, logs, PIDs and the task prolog live in
# $LLM_INTROSPECTION_SLURM_DIR (default /tmp/llm-introspection-slurm).
#
# The node: short hostname at 127.0.0.1, all CPUs, 80% of the memory, one fake GPU
# (gres on /dev/null: jobs that ask for it get CUDA_VISIBLE_DEVICES=0). Partitions `cpu`
# (default) and `gpu`, both on that node. No slurmdbd: sacct has nothing, use squeue (MinJobAge
# keeps finished jobs visible to squeue and scontrol for an hour). Every job's log gets a line
# from the task prolog per task, naming its job, step, partition and CUDA_VISIBLE_DEVICES.
set -euo pipefail

if [[ $EUID -ne 0 ]]; then
    exec sudo -n -E bash "$0" "$@"
fi

DIR="${LLM_INTROSPECTION_SLURM_DIR:-/tmp/llm-introspection-slurm}"
CONF=/etc/slurm/slurm.conf
MARKER="# written by llm-introspection .ci/slurm-cluster.sh"
HOST="$(hostname -s)"
DAEMONS=(munged slurmctld slurmd)

log() { echo "slurm-cluster: $*" >&2; }

install_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return
    log "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q slurm-wlm munge >/dev/null \
        || { apt-get update -q >/dev/null && apt-get install -y -q slurm-wlm munge >/dev/null; }
}

write_config() {
    local memory_mb cpus
    cpus="$(nproc)"
    memory_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) * 8 / 10 / 1024 ))
    if [[ -f "$CONF" ]] && ! ours "$CONF"; then
        log "$CONF exists and is not ours: not overwriting it"
        return 1
    fi
    mkdir -p "$DIR"/{state,spool,log,run,pids} /etc/slurm
    chmod 755 "$DIR"
    cat >"$CONF" <<EOF
$MARKER
ClusterName=llm-introspection-test
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
TaskProlog=$DIR/task-prolog.sh
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$(( memory_mb / cpus ))
MinJobAge=3600
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
GresTypes=gpu
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory_mb Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$HOST MaxTime=INFINITE State=UP
EOF
    cat >/etc/slurm/gres.conf <<EOF
$MARKER
AutoDetect=off
NodeName=$HOST Name=gpu File=/dev/null
EOF
    cat >"$DIR/task-prolog.sh" <<'EOF'
#!/bin/sh
echo "print slurm-cluster task: job=$SLURM_JOB_ID step=$SLURM_STEP_ID partition=$SLURM_JOB_PARTITION CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}"
EOF
    chmod 644 "$CONF" /etc/slurm/gres.conf
    chmod 755 "$DIR/task-prolog.sh"
}

ours() {
    [[ "$(head -n 1 "$1")" == "$MARKER" ]]
}

# PID of a daemon this script started and that still runs, or nothing.
started_pid() {
    local file="$DIR/pids/$1" pid
    [[ -f "$file" ]] || return 0
    pid="$(cat "$file")"
    if [[ -d "/proc/$pid" && "$(cat "/proc/$pid/comm")" == "$1" ]]; then
        echo "$pid"
    fi
}

start() {
    local name="$1"
    shift
    "$@" >>"$DIR/log/$name.out" 2>&1 &
    echo $! >"$DIR/pids/$name"
}

start_munge() {
    if munge_answers; then
        return  # a munged already answers on the default socket (ours or the system's)
    fi
    mkdir -p /run/munge
    start munged munged --foreground --force --log-file="$DIR/log/munged.log" \
        --pid-file="$DIR/run/munged.pid" --seed-file="$DIR/run/munged.seed"
    wait_for "munged to answer" munge_answers
}

munge_answers() {
    { munge -n </dev/null | unmunge; } >/dev/null 2>&1
}

wait_for() {
    local what="$1"
    shift
    for _ in $(seq 60); do
        "$@" && return
        sleep 0.5
    done
    log "timed out waiting for $what; logs in $DIR/log:"
    tail -n 20 "$DIR"/log/* >&2 || true
    return 1
}

node_idle() {
    [[ "$(sinfo -h -N -n "$HOST" -o %t 2>/dev/null | sort -u)" == "idle" ]]  # one line per partition
}

up() {
    if cluster_answers; then
        if [[ -n "$(started_pid slurmctld)" && -z "$(started_pid slurmd)" ]]; then
            # our controller outlived our node daemon (a run killed while taking the cluster down): start over
            log "our slurmctld answers without our slurmd: restarting the cluster"
            down
        else
            log "already up"
            return
        fi
    fi
    install_packages
    write_config
    start_munge
    start slurmctld slurmctld -D -c
    wait_for "slurmctld to answer" cluster_answers
    start slurmd slurmd -D
    wait_for "node $HOST to be idle" node_idle
    log "up: node $HOST idle"
}

cluster_answers() {
    [[ -f "$CONF" ]] && scontrol ping 2>/dev/null | grep -q "is UP"
}

down() {
    local name pid file
    if [[ -n "$(started_pid slurmctld)" ]]; then
        squeue -h -o %i 2>/dev/null | xargs -r scancel || true
    fi
    for name in slurmd slurmctld munged; do
        pid="$(started_pid "$name")"
        if [[ -n "$pid" ]]; then
            kill "$pid"
            for _ in $(seq 40); do
                [[ -d "/proc/$pid" ]] || break
                sleep 0.25
            done
            [[ -d "/proc/$pid" ]] && kill -KILL "$pid"
            log "stopped $name ($pid)"
        fi
        rm -f "$DIR/pids/$name"
    done
    for file in "$CONF" /etc/slurm/gres.conf; do
        if [[ -f "$file" ]] && ours "$file"; then
            rm "$file"
        fi
    done
}

status() {
    local name
    for name in "${DAEMONS[@]}"; do
        echo "$name: $(started_pid "$name" || true)"
    done
    cluster_answers || { echo "cluster: down"; return 1; }
    echo "cluster: up ($CONF)"
    sinfo
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
