#!/usr/bin/env bash
# Start a local RabbitMQ for the tests: install Debian's rabbitmq-server if it is missing (needs
# root), start the node if it is not running, and wait until it accepts connections.
set -euo pipefail
if ! command -v rabbitmq-server >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: rabbitmq-server is not installed; run as root or: sudo apt-get install rabbitmq-server" >&2
    exit 1
  fi
  echo "[broker] installing Debian's rabbitmq-server" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rabbitmq-server >/dev/null
fi
if ! rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
  echo "[broker] starting rabbitmq-server" >&2
  rabbitmq-server -detached   # in containers policy-rc.d blocks the service; run the node directly
fi
for _ in $(seq 120); do
  rabbitmqctl -q await_startup --timeout 5 >/dev/null 2>&1 && break
  sleep 1
done
rabbitmqctl -q await_startup --timeout 30
rabbitmq-diagnostics -q check_port_connectivity
echo "[broker] RabbitMQ is up on localhost:5672" >&2
