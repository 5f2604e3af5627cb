#!/usr/bin/env bash
# A one-node Ceph cluster with an S3 gateway on 127.0.0.1, built from nothing: one monitor, one
# OSD keeping its data in bluestore on a sparse file, one radosgw; no manager (nothing here needs
# one). Uses Debian's packages: apt-get install ceph-mon ceph-osd radosgw uuid-runtime curl.
#
# On success it prints shell assignments on stdout (logs go to stderr):
#     FSTRANSPORT_TEST_S3_ENDPOINT=http://127.0.0.1:PORT
#     AWS_ACCESS_KEY_ID=...
#     AWS_SECRET_ACCESS_KEY=...
# so that   set -a; eval "$(ci/ceph-rgw/start.sh)"; set +a   points fstransport's test fixtures
# at it (.ci/run passes the lines to env instead).
#
# Settings (environment):
#   RGW_DIR       where the cluster keeps everything (required; emptied first; stop.sh reads it)
#   RGW_PORT      the S3 port (default 18600); the monitor listens on RGW_PORT+1 (msgr2) and
#                 RGW_PORT+2 (msgr1), so that several clusters can run side by side
#   RGW_SIZE      size of the OSD's sparse file (default 8G; only what is written takes space)
#   RGW_TIMEOUT   seconds the whole start may take (default 180)
set -euo pipefail

D=${RGW_DIR:?set RGW_DIR to a directory for the cluster}
PORT=${RGW_PORT:-18600}
MON2=$((PORT + 1))
MON1=$((PORT + 2))
SIZE=${RGW_SIZE:-8G}
TIMEOUT=${RGW_TIMEOUT:-180}
ACCESS_KEY=fstransport-ci
SECRET_KEY=fstransport-ci-secret-0123456789abcdef
ENDPOINT="http://127.0.0.1:$PORT"
HERE=$(cd "$(dirname "$0")" && pwd)
export CEPH_CONF="$D/ceph.conf"

started=$SECONDS
deadline=$((SECONDS + TIMEOUT))
say() { echo "[ceph-rgw +$((SECONDS - started))s] $*" >&2; }
die() {
    say "failed: $*"
    say "logs: $D/log"
    RGW_DIR="$D" "$HERE/stop.sh" || true
    exit 1
}
remaining() { echo $((deadline > SECONDS ? deadline - SECONDS : 1)); }
# wait_for WHAT DAEMON COMMAND...: retry COMMAND until it succeeds, the daemon dies or time is up
wait_for() {
    local what=$1 daemon=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        pid=$(awk -v n="$daemon" '$1 == n { print $2 }' "$D/pids")
        kill -0 "$pid" 2>/dev/null || die "$daemon exited while waiting for $what: $(tail -n 5 "$D/log/$daemon.out")"
        ((SECONDS < deadline)) || die "timed out waiting for $what"
        sleep 0.3
    done
}
# daemon NAME COMMAND...: start COMMAND in the foreground of its own session, record its PID
daemon() {
    local name=$1
    shift
    setsid "$@" -f </dev/null >"$D/log/$name.out" 2>&1 &
    echo "$name $!" >>"$D/pids"
}

for tool in ceph-mon ceph-osd radosgw radosgw-admin monmaptool ceph uuidgen curl numfmt setsid; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install ceph-mon ceph-osd radosgw uuid-runtime curl)"
done
case "$D" in / | /tmp | /root | /home | /var | /usr) die "refusing RGW_DIR=$D" ;; esac
if [[ -f "$D/pids" ]]; then RGW_DIR="$D" "$HERE/stop.sh"; fi
rm -rf "$D"
mkdir -p "$D"/{mon,osd/0,run,log}
: >"$D/pids"

fsid=$(uuidgen)
mon_addr="[v2:127.0.0.1:$MON2,v1:127.0.0.1:$MON1]"
cat >"$CEPH_CONF" <<EOF
[global]
fsid = $fsid
mon host = $mon_addr
public addr = 127.0.0.1
ms bind ipv6 = false
# No cephx: nothing but this machine can reach the cluster.
auth cluster required = none
auth service required = none
auth client required = none
keyring = /dev/null
# radosgw asks the monitor for a "secure" session by default, which auth = none cannot give
# (it fails with EACCES): let it settle for crc.
ms mon client mode = crc
mon warn on insecure global id reclaim allowed = false
run dir = $D/run
admin socket = $D/run/\$name.asok
crash dir = $D/log
log file = $D/log/\$name.log
log to stderr = false
err to stderr = false
debug ms = 0
mon data = $D/mon/\$id
osd data = $D/osd/\$id
# One OSD holds every pool: one copy of everything, few placement groups, no autoscaler
# (it lives in the manager, which is not started).
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
# CI machines have full disks more often than not: do not stop writes at 95 % used.
mon data avail warn = 2
mon data avail crit = 1
# bluestore on a sparse file: memory stays flat whatever is stored (memstore grows with it).
osd objectstore = bluestore
bluestore block create = true
bluestore block size = $(numfmt --from=iec "$SIZE")
bluestore fsck on mount = false
bluestore fsck on mkfs = false
osd memory target = 939524096
osd op num shards = 2
osd op num threads per shard = 1
# S3 keys can be long: the default assumes an ext4 xattr limit bluestore does not have.
osd max object name len = 460
osd max object namespace len = 64

[mon]
# radosgw creates its pools one by one; commit each map change at once instead of batching
# them for a second: the start takes ~4 s instead of ~15.
paxos propose interval = 0.05
paxos min wait = 0.01

[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:$PORT
rgw thread pool size = 64
rgw enable usage log = false
rgw dns name = 127.0.0.1
# RGW frees a deleted object's data in its garbage collector, by default no sooner than 2 h
# later (rgw gc obj min wait = 7200). Benchmarks that write and delete GiBs then fill the OSD's
# sparse file, the cluster turns OSD_FULL and RGW stops answering writes (clients see read
# timeouts, not an error). Reclaim within seconds instead.
rgw gc obj min wait = 5
rgw gc processor period = 10
rgw gc processor max time = 10
EOF

say "monitor"
monmaptool --create --clobber --fsid "$fsid" --addv a "$mon_addr" "$D/monmap" >/dev/null
timeout "$(remaining)" ceph-mon --mkfs -i a --monmap "$D/monmap" >"$D/log/mon-mkfs.out" 2>&1 ||
    die "ceph-mon --mkfs: $(tail -n 5 "$D/log/mon-mkfs.out")"
daemon mon ceph-mon -i a
wait_for "the monitor" mon timeout 10 ceph --connect-timeout 5 mon stat

say "OSD (bluestore, $SIZE sparse file)"
osd_uuid=$(uuidgen)
osd_id=$(timeout "$(remaining)" ceph --connect-timeout 10 osd new "$osd_uuid") || die "ceph osd new"
[[ $osd_id == 0 ]] || die "expected OSD id 0, got $osd_id"
timeout "$(remaining)" ceph-osd -i 0 --mkfs --osd-uuid "$osd_uuid" >"$D/log/osd-mkfs.out" 2>&1 ||
    die "ceph-osd --mkfs: $(tail -n 5 "$D/log/osd-mkfs.out")"
daemon osd ceph-osd -i 0
osd_up() { ceph --connect-timeout 5 osd dump 2>/dev/null | grep -q '^osd\.0 up'; }
wait_for "the OSD" osd osd_up

say "radosgw on $ENDPOINT"
daemon rgw radosgw -n client.rgw
wait_for "radosgw" rgw curl -fs -m 5 -o /dev/null "$ENDPOINT/"
timeout "$(remaining)" radosgw-admin user create --uid=fstransport --display-name=fstransport \
    --access-key="$ACCESS_KEY" --secret-key="$SECRET_KEY" >"$D/log/user.out" 2>&1 ||
    die "radosgw-admin user create: $(tail -n 5 "$D/log/user.out")"

# radosgw creates its bucket pools with the first bucket: do that now, so that the first test
# does not wait for it (or time out).
s3() {
    curl -fsS -m 60 --aws-sigv4 "aws:amz:us-east-1:s3" --user "$ACCESS_KEY:$SECRET_KEY" \
        -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$@" >/dev/null
}
s3 -X PUT "$ENDPOINT/ci-warm-up" || die "creating the first bucket"
s3 -X PUT --data-binary ready "$ENDPOINT/ci-warm-up/ready" || die "the first PUT"
s3 -X DELETE "$ENDPOINT/ci-warm-up/ready" && s3 -X DELETE "$ENDPOINT/ci-warm-up" || die "clean-up"
say "ready"

echo "FSTRANSPORT_TEST_S3_ENDPOINT=$ENDPOINT"
echo "AWS_ACCESS_KEY_ID=$ACCESS_KEY"
echo "AWS_SECRET_ACCESS_KEY=$SECRET_KEY"
