#!/usr/bin/env bash
# Stop the cluster ci/ceph-rgw/start.sh started in RGW_DIR: only the processes it recorded
# there, gateway first, monitor last; TERM, then KILL after 10 s. RGW_WIPE=1 also deletes
# RGW_DIR (the OSD's file with it).
set -uo pipefail
D=${RGW_DIR:?set RGW_DIR to the directory start.sh used}
if [[ ! -f "$D/pids" ]]; then
    echo "[ceph-rgw] nothing to stop in $D" >&2
    exit 0
fi
tac "$D/pids" | while read -r _ pid; do
    kill -TERM "$pid" 2>/dev/null || true
done
for _ in $(seq 50); do
    running=0
    while read -r _ pid; do
        if kill -0 "$pid" 2>/dev/null; then running=1; fi
    done <"$D/pids"
    ((running)) || break
    sleep 0.2
done
while read -r name pid; do
    if kill -0 "$pid" 2>/dev/null; then
        echo "[ceph-rgw] $name ($pid) ignored TERM: killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
done <"$D/pids"
rm -f "$D/pids"
if [[ ${RGW_WIPE:-0} == 1 ]]; then rm -rf "$D"; fi
echo "[ceph-rgw] stopped" >&2
