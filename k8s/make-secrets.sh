#!/usr/bin/env bash
# Create the cluster's Secrets once (`make k8s-deploy` runs this before `kubectl apply -k k8s/`):
#   hefl-hospital-keys       hospitals' keys  } both printed by `hefl keys-k8s-secrets`, which
#   hefl-coordinator-keys    coordinator's    } decides what each holds (never a secret key here)
#   hefl-broker-definitions  RabbitMQ users (coordinator, hospital, admin), vhost, permissions
#   hefl-broker-credentials  the broker URLs of coordinator and hospitals
# Existing Secrets are kept (rotating keys mid-run would break the run): delete them to re-issue.
# Identities issued: HEFL_HOSPITALS when set (give hefl-config's HEFL_HOSPITALS the same value),
# else hefl's --hospitals default. hefl runs from .venv when present, else from the
# hefl-coordinator image.
set -euo pipefail
cd "$(dirname "$0")/.."
NS=${HEFL_NAMESPACE:-hefl}
KUBECTL=${KUBECTL:-kubectl}
if "$KUBECTL" -n "$NS" get secret hefl-hospital-keys >/dev/null 2>&1; then
  echo "[k8s] Secrets exist in namespace $NS; keeping them" >&2; exit 0
fi
if [ -x .venv/bin/hefl ]; then
  hefl=(.venv/bin/hefl)
else
  # the HEFL_* settings of this shell reach hefl in the container too
  hefl=(docker run --rm --env-file <(env | grep '^HEFL_' || true) --entrypoint hefl
        hefl-coordinator:latest)
fi
"$KUBECTL" get namespace "$NS" >/dev/null 2>&1 || "$KUBECTL" create namespace "$NS"
"${hefl[@]}" keys-k8s-secrets | "$KUBECTL" -n "$NS" apply -f -

# Broker users: the same generator as the compose cluster, written into a temporary folder.
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT; chmod 700 "$work"
HEFL_CREDENTIALS_DIR="$work/broker" python3 docker/broker_credentials.py
set -a; . "$work/broker/.env"; set +a
apply() { "$KUBECTL" -n "$NS" create secret generic "$@" --dry-run=client -o yaml | "$KUBECTL" apply -f -; }
apply hefl-broker-definitions \
  --from-literal=definitions.json="$(cat "$work/broker/.secrets/definitions.json")"
apply hefl-broker-credentials \
  --from-literal=coordinator-url="amqp://coordinator:${HEFL_COORDINATOR_PASSWORD}@rabbitmq:5672/hefl" \
  --from-literal=hospital-url="amqp://hospital:${HEFL_HOSPITAL_PASSWORD}@rabbitmq:5672/hefl" \
  --from-literal=admin-password="${HEFL_ADMIN_PASSWORD}"
echo "[k8s] Secrets created in namespace $NS (admin password: kubectl -n $NS get secret hefl-broker-credentials -o jsonpath='{.data.admin-password}' | base64 -d)" >&2
