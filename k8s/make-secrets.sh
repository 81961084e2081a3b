#!/usr/bin/env bash
# Create the cluster's Secrets once (`make k8s-deploy` runs this before `kubectl apply -k k8s/`).
# `hefl keys-k8s-secrets` prints them all and decides what each holds:
#   hefl-coordinator-keys      the coordinator's keys (never a secret key, no masking key)
#   hefl-hospital-K-keys       site hospital-K's keys: the HE bundle, trust and ITS OWN identity
#                              (its signing key and its masking key)
#   hefl-hospital-K-broker     site hospital-K's broker login (its own RabbitMQ user)
#   hefl-broker-credentials    the coordinator's broker login, the admin password
#   hefl-broker-definitions    RabbitMQ users (one per participant), vhost, permissions, topology
#   hefl-broker-tls            the broker's TLS certificate and key and the private CA's
#                              certificate: the rabbitmq pod only (the CA's key is never written)
#   hefl-broker-ca             the private CA's certificate alone: every participant (--broker-ca)
#   hefl-broker-cookie         the Erlang cookie the broker cluster's nodes share: the rabbitmq pods
# Existing Secrets are kept (rotating keys mid-run would break the run): delete them to re-issue.
# Identities issued: HEFL_HOSPITALS when set (at least the sites of k8s/hospitals.yaml, `make
# k8s-sites`; give hefl-config's HEFL_HOSPITALS the same value), else hefl's --hospitals default.
# hefl runs from .venv when present, else from the hefl-coordinator image.
set -euo pipefail
cd "$(dirname "$0")/.."
NS=${HEFL_NAMESPACE:-hefl}
KUBECTL=${KUBECTL:-kubectl}
if "$KUBECTL" -n "$NS" get secret hefl-coordinator-keys >/dev/null 2>&1; then
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
echo "[k8s] Secrets created in namespace $NS (admin password: kubectl -n $NS get secret hefl-broker-credentials -o jsonpath='{.data.admin-password}' | base64 -d)" >&2
