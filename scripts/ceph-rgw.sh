#!/usr/bin/env bash
# A throw-away one-node Ceph cluster with an RGW (S3 + bucket notifications) on 127.0.0.1, for tests.
#
#   scripts/ceph-rgw.sh start DIR   # prints `endpoint=http://127.0.0.1:PORT` when RGW answers
#   scripts/ceph-rgw.sh stop DIR    # stops every daemon started from DIR (by its pid file) and removes DIR
#
# One monitor, one memstore OSD (objects live in memory), auth off, a user with fixed test keys.
# RGW listens on HTTP and on HTTPS (a self-signed certificate made here): Ceph only accepts a
# notification topic whose push endpoint carries a password (https://user:secret@host/events, sent
# as Basic auth) when the CreateTopic request itself comes over TLS.
# Ports: CEPH_MON_PORT (6789), CEPH_RGW_PORT (7480), CEPH_RGW_SSL_PORT (7443). Needs Debian's ceph-mon,
# ceph-osd, radosgw and openssl (scripts/setup.sh installs them). Nothing here touches /etc/ceph or /var/lib/ceph.
set -euo pipefail

ACCESS_KEY=${CEPH_ACCESS_KEY:-videostudio}
SECRET_KEY=${CEPH_SECRET_KEY:-videostudio-secret}
MON_PORT=${CEPH_MON_PORT:-6789}
RGW_PORT=${CEPH_RGW_PORT:-7480}
RGW_SSL_PORT=${CEPH_RGW_SSL_PORT:-7443}
START_TIMEOUT_S=${CEPH_START_TIMEOUT_S:-90}

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1; C=$(realpath -m "$2")

log() { echo "ceph-rgw: $*" >&2; }
deadline=$(( $(date +%s) + START_TIMEOUT_S ))
wait_until() {  # wait_until WHAT COMMAND...: retry until it succeeds or the start deadline passes
  local what=$1; shift
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then log "timed out waiting for $what (logs in $C/log)"; tail -n 20 "$C"/log/*.log >&2 || true; exit 1; fi
    sleep 0.3
  done
}

stop() {
  [ -d "$C" ] || return 0
  for pidfile in "$C"/run/*.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile" 2>/dev/null || true)
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
  for pidfile in "$C"/run/*.pid; do  # then wait (briefly) and make sure
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile" 2>/dev/null || true)
    [ -n "$pid" ] || continue
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  rm -rf "$C"
}

start() {
  for tool in monmaptool ceph-mon ceph-osd radosgw radosgw-admin ceph openssl curl; do
    command -v "$tool" >/dev/null || { log "$tool is missing: run scripts/setup.sh (apt-get install ceph-mon ceph-osd radosgw)"; exit 3; }
  done
  rm -rf "$C"; mkdir -p "$C"/{mon/a,osd/0,run,log,rgw}
  local fsid; fsid=$(cat /proc/sys/kernel/random/uuid)
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=127.0.0.1" \
    -keyout "$C/rgw.key" -out "$C/rgw.crt" >/dev/null 2>&1
  cat > "$C/ceph.conf" <<EOF
[global]
fsid = $fsid
mon_host = v1:127.0.0.1:$MON_PORT
public_network = 127.0.0.0/8
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
run_dir = $C/run
admin_socket = $C/run/\$name.asok
log_file = $C/log/\$name.log
pid_file = $C/run/\$name.pid
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
osd_crush_chooseleaf_type = 0
osd_objectstore = memstore
memstore_device_bytes = 2147483648
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
mon_max_pg_per_osd = 1000
mon_warn_on_pool_no_redundancy = false
[mon.a]
mon_data = $C/mon/a
[osd.0]
osd_data = $C/osd/0
[client.rgw.a]
rgw_data = $C/rgw
rgw_frontends = beast endpoint=127.0.0.1:$RGW_PORT ssl_endpoint=127.0.0.1:$RGW_SSL_PORT ssl_certificate=$C/rgw.crt ssl_private_key=$C/rgw.key
EOF
  local ceph=(ceph -c "$C/ceph.conf")
  monmaptool --create --addv a "[v1:127.0.0.1:$MON_PORT]" --fsid "$fsid" "$C/monmap" >/dev/null
  ceph-mon -c "$C/ceph.conf" -i a --mkfs --monmap "$C/monmap"
  ceph-mon -c "$C/ceph.conf" -i a
  # An OSD started before the monitor has quorum sends a zero fsid and exits 250 ('wrong fsid').
  wait_until "monitor quorum" timeout 10 "${ceph[@]}" quorum_status
  ceph-osd -c "$C/ceph.conf" -i 0 --mkfs 2>>"$C/log/osd-mkfs.err" >/dev/null
  # Even after quorum, the first OSD start can still exit 250: retry it.
  local started=""
  for t in 1 2 3 4 5 6 7 8 9 10; do
    if ceph-osd -c "$C/ceph.conf" -i 0 2>>"$C/log/osd-start.err"; then started=1; break; fi
    log "osd start try $t failed; retrying"; sleep 1
  done
  [ -n "$started" ] || { log "the OSD did not start (see $C/log)"; exit 1; }
  osd_up() { timeout 10 "${ceph[@]}" osd stat 2>/dev/null | grep -q "1 up"; }
  wait_until "the OSD" osd_up
  radosgw -c "$C/ceph.conf" -n client.rgw.a
  wait_until "RGW on port $RGW_PORT" curl -sf -o /dev/null "http://127.0.0.1:$RGW_PORT/"
  timeout 60 radosgw-admin -c "$C/ceph.conf" user create --uid=videostudio --display-name=videostudio \
    --access-key="$ACCESS_KEY" --secret="$SECRET_KEY" >/dev/null
  echo "endpoint=http://127.0.0.1:$RGW_PORT"
  echo "https_endpoint=https://127.0.0.1:$RGW_SSL_PORT"
  echo "access_key=$ACCESS_KEY"
  echo "secret_key=$SECRET_KEY"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
