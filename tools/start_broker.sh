#!/usr/bin/env bash
# Start a local RabbitMQ for the tests: install Debian's rabbitmq-server if it is missing (needs
# root), give the node the project's broker configuration (a TLS listener on 5671 with a
# throw-away CA, the message size cap: written by testkit/broker.py, which decides everything),
# start the node if it is not running or restart it when that configuration changed, and wait
# until it accepts connections on both ports.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v rabbitmq-server >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: rabbitmq-server is not installed; run as root or: sudo apt-get install rabbitmq-server" >&2
    exit 1
  fi
  echo "[broker] installing Debian's rabbitmq-server" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rabbitmq-server >/dev/null
fi

# The project's venv when `make install` made it, else the system Python with its cryptography.
python=.venv/bin/python
[ -x "$python" ] || python=/usr/bin/python3
if ! "$python" -c 'import cryptography' >/dev/null 2>&1; then
  echo "[broker] installing Debian's python3-cryptography (the test CA is made with it)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-cryptography >/dev/null
  python=/usr/bin/python3
fi
changed=$("$python" -m testkit.broker configure)

if rabbitmq-diagnostics -q ping >/dev/null 2>&1 && [ "$changed" = changed ]; then
  echo "[broker] configuration changed: restarting rabbitmq-server" >&2
  rabbitmqctl -q stop >/dev/null
  for _ in $(seq 60); do
    rabbitmq-diagnostics -q ping >/dev/null 2>&1 || break
    sleep 1
  done
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
echo "[broker] RabbitMQ is up on localhost:5672 and, over TLS, localhost:5671" >&2
