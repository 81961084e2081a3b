#!/usr/bin/env bash
# Create the cluster's Secrets once (`make k8s-deploy` runs this before `kubectl apply -k k8s/`):
#   hefl-hospital-keys       HE context, public and SECRET key, trust.json, hospitals' signing keys
#   hefl-coordinator-keys    HE context and public key, trust.json, the coordinator's signing key
#   hefl-broker-definitions  RabbitMQ users (coordinator, hospital, admin), vhost, permissions
#   hefl-broker-credentials  the broker URLs of coordinator and hospitals
# Existing Secrets are kept (rotating keys mid-run would break the run): delete them to re-issue.
# Key ceremony: `hefl keygen` from .venv when present, else the hefl-coordinator image.
set -euo pipefail
cd "$(dirname "$0")/.."
NS=${HEFL_NAMESPACE:-hefl}
MAX=${HEFL_MAX_HOSPITALS:-4}
KUBECTL=${KUBECTL:-kubectl}
if "$KUBECTL" -n "$NS" get secret hefl-hospital-keys >/dev/null 2>&1; then
  echo "[k8s] Secrets exist in namespace $NS; keeping them" >&2; exit 0
fi
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT; chmod 700 "$work"
if [ -x .venv/bin/hefl ]; then
  .venv/bin/hefl keygen --out "$work/keys" --hospitals "$MAX" >&2
else
  docker run --rm --user "$(id -u)" -v "$work:/out" --entrypoint hefl hefl-coordinator:latest \
    keygen --out /out/keys --hospitals "$MAX" >&2
fi
k="$work/keys"
args_h=(); args_c=()
for f in "$k"/he-hospital/*; do args_h+=("--from-file=he-hospital.$(basename "$f")=$f"); done
for f in "$k"/he-coordinator/*; do args_c+=("--from-file=he-coordinator.$(basename "$f")=$f"); done
for d in "$k"/identities/hospital-*; do args_h+=("--from-file=identity.$(basename "$d").pem=$d/signing_key.pem"); done
args_c+=("--from-file=identity.coordinator.pem=$k/identities/coordinator/signing_key.pem")
args_h+=("--from-file=trust.json=$k/identities/trust.json"); args_c+=("--from-file=trust.json=$k/identities/trust.json")
apply() { "$KUBECTL" -n "$NS" create secret generic "$@" --dry-run=client -o yaml | "$KUBECTL" apply -f -; }
"$KUBECTL" get namespace "$NS" >/dev/null 2>&1 || "$KUBECTL" create namespace "$NS"
apply hefl-hospital-keys "${args_h[@]}"
apply hefl-coordinator-keys "${args_c[@]}"
# Broker users: the same generator as the compose cluster, written into the temporary folder.
HEFL_CREDENTIALS_DIR="$work/broker" python3 docker/broker_credentials.py
set -a; . "$work/broker/.env"; set +a
apply hefl-broker-definitions --from-file=definitions.json="$work/broker/.secrets/definitions.json"
apply hefl-broker-credentials \
  --from-literal=coordinator-url="amqp://coordinator:${HEFL_COORDINATOR_PASSWORD}@rabbitmq:5672/hefl" \
  --from-literal=hospital-url="amqp://hospital:${HEFL_HOSPITAL_PASSWORD}@rabbitmq:5672/hefl" \
  --from-literal=admin-password="${HEFL_ADMIN_PASSWORD}"
echo "[k8s] Secrets created in namespace $NS (admin password: kubectl -n $NS get secret hefl-broker-credentials -o jsonpath='{.data.admin-password}' | base64 -d)" >&2
