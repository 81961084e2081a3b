#!/bin/sh
# Healthy = the hefl process (PID 1) runs and holds an established connection to the broker.
# `--live` checks only the process (a Kubernetes liveness probe must not restart a hospital
# while the broker is away: hefl reconnects by itself).
# The broker port comes from $HEFL_BROKER_URL (5672 for amqp://, 5671 for amqps://).
url=${HEFL_BROKER_URL:-amqp://localhost:5672/}
port=$(echo "$url" | sed -n 's|^[a-z]*://[^/]*:\([0-9][0-9]*\)\(/.*\)\{0,1\}$|\1|p')
[ -n "$port" ] || case "$url" in amqps://*) port=5671 ;; *) port=5672 ;; esac
hex=$(printf '%04X' "$port")
[ -r /proc/1/cmdline ] && tr '\0' ' ' </proc/1/cmdline | grep -q hefl || exit 1
[ "${1:-}" = --live ] && exit 0
grep -Eq "^ *[0-9]+: [0-9A-F]+:[0-9A-F]{4} [0-9A-F]+:$hex 01 " /proc/net/tcp /proc/net/tcp6
