#!/usr/bin/env bash
# Stop the Slurm started by .ci/slurm-up.sh (every slurmd, slurmctld, munged).
# Safe to call when nothing runs. Jobs still queued or running are cancelled.
set -uo pipefail

STATE="${SLURM_CI_STATE:-/var/spool/slurm-ci}"

say() { echo "slurm-down: $*"; }

stop_pidfile() {  # name pidfile
    local name="$1" pidf="$2" pid
    [ -f "$pidf" ] || return 0
    pid="$(cat "$pidf")"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        say "stopping $name (pid $pid)"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        if kill -0 "$pid" 2>/dev/null; then
            say "$name did not stop, sending KILL"
            kill -9 "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$pidf"
}

if command -v scancel >/dev/null && [ -f "$STATE/slurmctld.pid" ]; then
    scancel --user="$(id -un)" >/dev/null 2>&1 || true
fi
# one slurmd per node (slurmd-<node>.pid), and slurmd.pid of the former one-node layout
for pidf in "$STATE"/slurmd.pid "$STATE"/slurmd-*.pid; do
    [ -e "$pidf" ] || continue
    node="${pidf##*/slurmd}"; node="${node#-}"; node="${node%.pid}"
    stop_pidfile "slurmd${node:+ -N $node}" "$pidf"
done
stop_pidfile slurmctld "$STATE/slurmctld.pid"

MUNGE_PID=/run/munge/munged.pid
if [ "${SLURM_CI_KEEP_MUNGE:-0}" != 1 ]; then
    stop_pidfile munged "$MUNGE_PID"
fi
say "done"
