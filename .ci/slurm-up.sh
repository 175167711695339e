#!/usr/bin/env bash
# Start a small Slurm cluster on this host (Debian/Ubuntu, run as root):
#   * node <hostname> in partition `debug` (the default partition), for one-node jobs;
#   * nodes n1 and n2 in partition `multi`, for multi-node jobs (`sbatch -p multi -N 2`);
#   * partition `short`: the node <hostname> again, with a MaxTime of 10 minutes (a cluster
#     whose time limit is shorter than a naive job; tests/test_cluster.py runs through it).
# All are slurmd daemons on this host (Debian's Slurm is built with
# --enable-multiple-slurmd): `slurmd -N <hostname>` on SlurmdPort (6818),
# `slurmd -N n1` on port 17001, `slurmd -N n2` on 17002. Stopping one of them
# (kill "$(cat /var/spool/slurm-ci/slurmd-n2.pid)") takes one node away.
#
#   .ci/slurm-up.sh          # install if needed, configure, start, wait until idle
#   .ci/slurm-down.sh        # stop the daemons again
#
# Idempotent: a second call with the daemons already up and the same
# configuration only checks that the nodes are idle (and starts a slurmd that is
# not running). A changed configuration restarts slurmctld and the slurmds;
# running jobs survive that (their slurmstepd processes stay).
#
# Environment (all optional):
#   SLURM_CI_PARTITION   partition of the one-node jobs         (default: debug)
#   SLURM_CI_MULTI_PARTITION  partition of the nodes n1..nK     (default: multi)
#   SLURM_CI_MULTI_NODES K, the number of nodes n1..nK on ports 17001.. (default: 2;
#                        0 leaves the multi-node partition out)
#   SLURM_CI_SHORT_PARTITION  partition with a short time limit on the one-node
#                        jobs' node (default: short)
#   SLURM_CI_SHORT_MINUTES    its MaxTime in minutes (default: 10; 0 leaves it out)
#   SLURM_CI_CPUS        CPUs advertised for the node          (default: nproc)
#                        more than nproc oversubscribes the cores, which helps a
#                        CI run of many short, mostly idle jobs
#   SLURM_CI_MEM_MB      RealMemory in MB                      (default: 80% of RAM,
#                                                               at least 1 GiB left free)
#                        n1..nK advertise the same CPUs and this memory divided by K
#                        (they share the host with the one-node partition, which
#                        oversubscribes it when both partitions are busy)
#   SLURM_CI_TIMEOUT     seconds to wait for the node to become idle (default: 90)
#   SLURM_CI_STATE       state/spool/log root                  (default: /var/spool/slurm-ci)
#   SLURM_CI_PROCTRACK   linuxproc (default; works in containers without cgroups)
#                        or cgroup (as on production clusters; needs a writable
#                        cgroup v1 freezer or cgroup v2 hierarchy). The two differ
#                        in who gets `scancel --signal` / `sbatch --signal`:
#                        linuxproc signals every process of a job step, cgroup
#                        only the step's task (for Snakemake jobs: the Snakemake
#                        inside the job, not the rule's command). See docs/slurm.md.
#
# Accounting is off (no slurmdbd): `sacct` does not work, job states come from
# `squeue`, which keeps finished jobs for MinJobAge seconds (set high on purpose).
set -euo pipefail

PARTITION="${SLURM_CI_PARTITION:-debug}"
MULTI_PARTITION="${SLURM_CI_MULTI_PARTITION:-multi}"
MULTI_NODES="${SLURM_CI_MULTI_NODES:-2}"
SHORT_PARTITION="${SLURM_CI_SHORT_PARTITION:-short}"
SHORT_MINUTES="${SLURM_CI_SHORT_MINUTES:-10}"
TIMEOUT="${SLURM_CI_TIMEOUT:-90}"
PROCTRACK="${SLURM_CI_PROCTRACK:-linuxproc}"
STATE="${SLURM_CI_STATE:-/var/spool/slurm-ci}"
LOGDIR="$STATE/log"
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"

say() { echo "slurm-up: $*"; }
die() {
    echo "slurm-up: error: $*" >&2
    for f in "$LOGDIR/slurmctld.log" "$LOGDIR"/slurmd-*.log "$LOGDIR/munged.log"; do
        if [ -s "$f" ]; then
            echo "----- tail of $f -----" >&2
            tail -n 30 "$f" >&2
        fi
    done
    exit 1
}

[ "$(id -u)" = 0 ] || die "must run as root (installs packages and starts daemons)"
case "$MULTI_NODES" in
    ''|*[!0-9]*) die "SLURM_CI_MULTI_NODES must be a number of nodes (0-99), not '$MULTI_NODES'" ;;
esac
[ "$MULTI_NODES" -le 99 ] || die "SLURM_CI_MULTI_NODES must be at most 99, not $MULTI_NODES"
case "$SHORT_MINUTES" in
    ''|*[!0-9]*) die "SLURM_CI_SHORT_MINUTES must be a number of minutes, not '$SHORT_MINUTES'" ;;
esac

# ---------------------------------------------------------------- packages
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
    say "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null \
        || die "apt-get install slurm-wlm munge failed"
fi

# ---------------------------------------------------------------- sizes
HOST="$(hostname -s)"
NCPU="$(nproc)"
CPUS="${SLURM_CI_CPUS:-$NCPU}"
TOTAL_MB="$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)"
if [ -n "${SLURM_CI_MEM_MB:-}" ]; then
    MEM_MB="$SLURM_CI_MEM_MB"
else
    MEM_MB=$(( TOTAL_MB * 8 / 10 ))
    if [ $(( TOTAL_MB - MEM_MB )) -lt 1024 ]; then MEM_MB=$(( TOTAL_MB - 1024 )); fi
    if [ "$MEM_MB" -lt 256 ]; then MEM_MB=256; fi
fi
DEF_MEM_PER_CPU=$(( MEM_MB / CPUS ))
MULTI=()
MULTI_MEM_MB=0
if [ "$MULTI_NODES" -gt 0 ]; then
    MULTI_MEM_MB=$(( MEM_MB / MULTI_NODES ))
    if [ "$MULTI_MEM_MB" -lt 256 ]; then MULTI_MEM_MB=256; fi
    for i in $(seq 1 "$MULTI_NODES"); do MULTI+=("n$i"); done
fi
NODES=("$HOST" "${MULTI[@]}")
# The host's real core layout; when CPUS differs slurmd must accept the
# configured value instead of the detected one.
OVERRIDES=""
if [ "$CPUS" != "$NCPU" ]; then OVERRIDES="SlurmdParameters=config_overrides"; fi

mkdir -p "$STATE/ctld" "$LOGDIR" "$CONF_DIR"
for node in "${NODES[@]}"; do mkdir -p "$STATE/d/$node"; done

# ---------------------------------------------------------------- slurm.conf
NEW_CONF="$(mktemp)"
trap 'rm -f "$NEW_CONF"' EXIT
cat >"$NEW_CONF" <<EOF
# Slurm for CI and local testing on one host (written by .ci/slurm-up.sh): node $HOST
# (partition $PARTITION) and $MULTI_NODES more node(s) n1.. (partition $MULTI_PARTITION), one slurmd each.
ClusterName=aotci
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
StateSaveLocation=$STATE/ctld
# %n: the node name, so that the slurmd daemons on this host keep apart
SlurmdSpoolDir=$STATE/d/%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# linuxproc: track processes by parentage (cgroups are often unavailable in containers)
ProctrackType=proctrack/$PROCTRACK
TaskPlugin=task/none
# No accounting daemon: sacct is unavailable, squeue is the status source.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Keep finished jobs visible to squeue for a day (status polling relies on it).
MinJobAge=86400
MaxJobCount=100000
KillWait=30
InactiveLimit=0
Waittime=0
SchedulerType=sched/backfill
# A requeued job (scontrol requeue: a job that stopped for its time limit with exit 75) may start
# again cred_expire + 1 seconds later (default 120 s) and then waits for the next scheduling pass
# (sched_interval, default 60 s; backfill every bf_interval, default 30 s): about two minutes per
# requeue with the defaults, about 12 s with these. cred_expire is also how long a job step's
# credential stays valid on its way to slurmd (5 s at least), ample on one host.
AuthInfo=cred_expire=10
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$DEF_MEM_PER_CPU
$OVERRIDES
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
if [ "$SHORT_MINUTES" -gt 0 ]; then
    # the same node under a short time limit (jobs of both partitions share its CPUs)
    echo "PartitionName=$SHORT_PARTITION Nodes=$HOST Default=NO MaxTime=$SHORT_MINUTES State=UP" \
        "OverSubscribe=NO" >>"$NEW_CONF"
fi
if [ "$MULTI_NODES" -gt 0 ]; then
    for i in $(seq 1 "$MULTI_NODES"); do
        echo "NodeName=n$i NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$(( 17000 + i ))" \
            "CPUs=$CPUS RealMemory=$MULTI_MEM_MB State=UNKNOWN"
    done >>"$NEW_CONF"
    echo "PartitionName=$MULTI_PARTITION Nodes=n[1-$MULTI_NODES] Default=NO MaxTime=INFINITE" \
        "State=UP OverSubscribe=NO" >>"$NEW_CONF"
fi

CONF_CHANGED=0
case "$PROCTRACK" in
    linuxproc) ;;
    cgroup)
        CG_CONF="$(mktemp)"
        if [ -d /sys/fs/cgroup/freezer ]; then CG_PLUGIN=cgroup/v1; else CG_PLUGIN=cgroup/v2; fi
        printf 'CgroupPlugin=%s\nCgroupAutomount=no\nConstrainCores=no\nConstrainRAMSpace=no\n' \
            "$CG_PLUGIN" >"$CG_CONF"
        if ! cmp -s "$CG_CONF" "$CONF_DIR/cgroup.conf"; then
            install -m 0644 "$CG_CONF" "$CONF_DIR/cgroup.conf"
            CONF_CHANGED=1
        fi
        rm -f "$CG_CONF" ;;
    *) die "SLURM_CI_PROCTRACK must be linuxproc or cgroup, not '$PROCTRACK'" ;;
esac

if ! cmp -s "$NEW_CONF" "$CONF"; then
    install -m 0644 "$NEW_CONF" "$CONF"
    CONF_CHANGED=1
    say "wrote $CONF (node $HOST, CPUs=$CPUS, RealMemory=${MEM_MB}MB, partition $PARTITION;" \
        "nodes ${MULTI[*]:-none}, RealMemory=${MULTI_MEM_MB}MB each, partition $MULTI_PARTITION)"
fi

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# ---------------------------------------------------------------- munge
if [ ! -s /etc/munge/munge.key ]; then
    say "creating munge key"
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile=/etc/munge/munge.key --force
    else
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    fi
fi
chown -R munge:munge /etc/munge
chmod 0700 /etc/munge
chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged --force >>"$LOGDIR/munged.log" 2>&1 \
        || die "munged failed to start"
    for _ in $(seq 1 20); do
        munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.5
    done
    munge -n </dev/null | unmunge >/dev/null 2>&1 || die "munge does not work"
fi

# ---------------------------------------------------------------- daemons
if [ "$CONF_CHANGED" = 1 ]; then
    # configuration changed: restart whatever runs with the old one (every slurmd, also those
    # of an earlier layout: slurmd.pid of the one-node set-up, nodes no longer configured)
    for pidf in "$STATE"/slurmd.pid "$STATE"/slurmd-*.pid "$STATE/slurmctld.pid"; do
        if alive "$pidf"; then
            kill "$(cat "$pidf")" || true
            for _ in $(seq 1 40); do alive "$pidf" || break; sleep 0.25; done
        fi
        case "$pidf" in */slurmd*) rm -f "$pidf" ;; esac
    done
fi
if ! alive "$STATE/slurmctld.pid"; then
    say "starting slurmctld (log: $LOGDIR/slurmctld.log)"
    /usr/sbin/slurmctld -f "$CONF" >>"$LOGDIR/slurmctld.out" 2>&1 \
        || die "slurmctld failed to start"
fi
for node in "${NODES[@]}"; do
    if ! alive "$STATE/slurmd-$node.pid"; then
        say "starting slurmd -N $node (log: $LOGDIR/slurmd-$node.log)"
        /usr/sbin/slurmd -f "$CONF" -N "$node" >>"$LOGDIR/slurmd-$node.out" 2>&1 \
            || die "slurmd -N $node failed to start"
    fi
done

# ---------------------------------------------------------------- wait for idle
node_state() {  # the node's state without the flag suffixes sinfo appends (idle* = not responding, ...)
    sinfo -h -n "$1" -o '%T' 2>/dev/null | head -n1 | tr -d '*~#!%$@^+-' || true
}
deadline=$(( $(date +%s) + TIMEOUT ))
declare -A resumed
for node in "${NODES[@]}"; do
    resumed[$node]=0
    while :; do
        state="$(node_state "$node")"
        case "$state" in
            idle|mixed|allocated|completing)
                break ;;
            down*|drain*|fail*|unknown*|"")
                # came up down/drained (e.g. after an unclean stop, or a stopped slurmd): put it back
                if [ -n "$state" ] && [ "${resumed[$node]}" -lt 3 ] && [[ "$state" != unknown* ]]; then
                    scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true
                    resumed[$node]=$(( resumed[$node] + 1 ))
                fi ;;
        esac
        if [ "$(date +%s)" -ge "$deadline" ]; then
            sinfo -N -l >&2 || true
            scontrol show node "$node" 2>&1 | grep -E 'State|Reason' >&2 || true
            die "node $node not idle after ${TIMEOUT}s (state: '${state:-no answer from slurmctld}')"
        fi
        sleep 1
    done
    say "node $node is $state"
done
SHORT_READY=""
if [ "$SHORT_MINUTES" -gt 0 ]; then SHORT_READY="; partition $SHORT_PARTITION (MaxTime $SHORT_MINUTES min) ready"; fi
say "partition $PARTITION ready${MULTI[0]:+; partition $MULTI_PARTITION (${MULTI[*]}) ready}$SHORT_READY"
sinfo
