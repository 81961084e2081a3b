#!/usr/bin/env bash
# The compose cluster, as the Makefile drives it:
#   tools/container_cluster.sh up [N]     credentials, images, start with N hospital sites, follow
#   tools/container_cluster.sh scale N    set the number of hospital sites (hospital-1..N)
#   tools/container_cluster.sh status     containers, health, identities, run progress, the
#                                         status page's and Prometheus's URLs
#   tools/container_cluster.sh logs       follow every service's log
#   tools/container_cluster.sh down       stop and remove containers (volumes kept)
#   tools/container_cluster.sh clean      down, and remove volumes, images, credentials and CA
# Uses `docker compose` (the v2 plugin) when present, else `docker-compose` (1.29 or v2);
# HEFL_COMPOSE="docker-compose" (or another command) picks one.
# Environment: see docker/compose.yaml (HEFL_ROUNDS, HEFL_HOSPITALS, HEFL_STATUS_PORT, ...),
# BASE_IMAGE, PROMETHEUS_BASE_IMAGE, RABBITMQ_IMAGE, OFFLINE, HEFL_SKIP_BUILD=1 (use the images
# already built), HEFL_FOLLOW=0.
# Identities: a new cluster issues HEFL_HOSPITALS of them (at least N; `up N` sets it to N when
# unset), once; the count is remembered in docker/.env. Each identity is one site: the services
# keys-hospital-K and hospital-K of the override docker/.generated/<project>.yaml, which
# `python -m hefl.sites compose` writes (and which refuses more sites than identities). Broker
# passwords are files in docker/.secrets/ (docker/broker_credentials.py), one user per identity;
# so is the broker's TLS material (docker/.secrets/tls/: the private CA's certificate, the
# broker's certificate and key; the CA's key is never written), kept until `clean`.
# Prometheus's target file of the running sites (docker/.generated/<project>-targets/sites.json)
# is written with the override, so `scale` updates what Prometheus scrapes without a restart.
# Broker: one node, or a three-node cluster with HEFL_BROKER_NODES=3 (`make up BROKER_NODES=3`:
# docker/compose.broker-cluster.yaml, and the sites override gives every participant the three
# nodes' URLs); remembered in docker/.env like the identities.
set -euo pipefail
cd "$(dirname "$0")/.."
PROJECT=${HEFL_PROJECT:-hefl}
SITES=docker/.generated/$PROJECT.yaml
TARGETS=docker/.generated/$PROJECT-targets   # mounted by the prometheus service (compose.yaml)
export HEFL_PROJECT=$PROJECT
if [ -n "${HEFL_COMPOSE:-}" ]; then read -r -a COMPOSE <<<"$HEFL_COMPOSE"
elif docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then COMPOSE=(docker-compose)
else echo "error: neither 'docker compose' nor 'docker-compose' is installed (Debian: apt-get install docker.io docker-compose)" >&2; exit 1
fi
: "${HEFL_DATA_DIR:=$(cd .. && pwd)/shared/data/diabetes130}"
export HEFL_DATA_DIR
py() { if [ -x .venv/bin/python ]; then .venv/bin/python "$@"; else python3 "$@"; fi; }
# The broker nodes this cluster runs: HEFL_BROKER_NODES, else the count remembered, else 1.
broker_nodes() {
  local remembered=""
  [ -f docker/.env ] && remembered=$(sed -n 's/^HEFL_BROKER_NODES=\([0-9][0-9]*\)$/\1/p' docker/.env | tail -1)
  echo "${HEFL_BROKER_NODES:-${remembered:-1}}"
}
remember_broker_nodes() {
  local n; n=$(broker_nodes)
  { grep -v '^HEFL_BROKER_NODES=' docker/.env 2>/dev/null || true; echo "HEFL_BROKER_NODES=$n"; } >docker/.env.new
  chmod 600 docker/.env.new && mv docker/.env.new docker/.env
}
compose() {
  local files=(-f docker/compose.yaml) env=()
  if [ "$(broker_nodes)" != 1 ]; then files+=(-f docker/compose.broker-cluster.yaml); fi
  [ -f "$SITES" ] && files+=(-f "$SITES")   # the sites, once `up` wrote them
  [ -f docker/.env ] && env=(--env-file docker/.env)
  "${COMPOSE[@]}" -p "$PROJECT" "${env[@]}" "${files[@]}" "$@"
}

follow() {
  local id; id=$(compose ps -a -q coordinator)  # -a: it may have finished already
  [ -n "$id" ] || { echo "error: no coordinator container" >&2; return 1; }
  echo "[cluster] following the coordinator (Ctrl-C stops following; the cluster keeps running)" >&2
  trap 'echo; echo "[cluster] stopped following; make status / make logs / make down" >&2; exit 0' INT
  docker logs -f "$id" 2>&1 | grep --line-buffered -E '^(round |run |coordinator stopped|error)' || true
  trap - INT
  local code; code=$(docker inspect -f '{{.State.ExitCode}}' "$id")
  echo "[cluster] coordinator exited with code $code" >&2
  py docker/status.py --project "$PROJECT" || true
  return "$code"
}

# The number of identities this cluster's keys hold: remembered in docker/.env when issued.
issued_identities() {
  [ -f docker/.env ] || return 0
  sed -n 's/^HEFL_HOSPITALS=\([0-9][0-9]*\)$/\1/p' docker/.env | tail -1
}
keys_exist() { docker volume inspect "${PROJECT}_hospital-keys" >/dev/null 2>&1; }

# `up N`: a new cluster issues HEFL_HOSPITALS identities (N when unset) and remembers the count;
# a cluster whose keys exist keeps its count (keys are issued once per cluster).
identities_for_up() {
  local n=$1 issued
  issued=$(issued_identities)
  if [ -z "$issued" ] || ! keys_exist; then
    issued=${HEFL_HOSPITALS:-$n}
    [ "$issued" -ge "$n" ] || { echo "error: HOSPITALS=$n is more than HEFL_HOSPITALS=$issued identities" >&2; exit 2; }
    { grep -v '^HEFL_HOSPITALS=' docker/.env 2>/dev/null || true; echo "HEFL_HOSPITALS=$issued"; } >docker/.env.new
    chmod 600 docker/.env.new && mv docker/.env.new docker/.env
  elif [ -n "${HEFL_HOSPITALS:-}" ] && [ "$HEFL_HOSPITALS" != "$issued" ]; then
    echo "[cluster] keys exist for $issued identities; HEFL_HOSPITALS=$HEFL_HOSPITALS is ignored until make clean" >&2
  fi
  export HEFL_HOSPITALS=$issued
}

# `sites N`: write the override and Prometheus's target file for N sites (hefl.sites refuses
# more than the identities issued) and print the override's site services.
sites() {
  local issued; issued=$(issued_identities)
  [ -n "$issued" ] || { echo "error: no cluster keys issued yet: make up" >&2; exit 2; }
  py -m hefl.sites compose --sites "$1" --issued "$issued" --out "$SITES" --targets "$TARGETS/sites.json" \
    --broker-nodes "$(broker_nodes)"
}

case "${1:-}" in
  up)
    n=${2:?usage: up N}
    identities_for_up "$n"
    sites "$n" >/dev/null   # refuses a broker node count other than 1 or 3
    remember_broker_nodes
    py docker/broker_credentials.py --hospitals "$HEFL_HOSPITALS"
    export HEFL_EXPECT_HOSPITALS=${HEFL_EXPECT_HOSPITALS:-$n}
    [ "${HEFL_SKIP_BUILD:-0}" = 1 ] || bash tools/container_build.sh coordinator hospital prometheus
    echo "[cluster] $("${COMPOSE[@]}" version 2>/dev/null | head -1) ('${COMPOSE[*]}')" >&2
    compose up -d --remove-orphans
    [ "${HEFL_FOLLOW:-1}" = 1 ] && follow ;;
  scale)
    # Only the sites: the coordinator (running, paused or finished) is left alone; sites beyond
    # N are removed as orphans, their key volumes kept for scaling up again.
    out=$(sites "${2:?usage: scale N}")
    read -r -a services <<<"$out"
    compose up -d --remove-orphans "${services[@]}" ;;
  status) py docker/status.py --project "$PROJECT" ;;
  logs) compose logs -f --tail=50 ;;
  down) compose down --remove-orphans ;;   # keys, shards, store and models stay
  clean)
    compose down --remove-orphans --volumes
    docker image rm -f "hefl-coordinator:${HEFL_TAG:-latest}" "hefl-hospital:${HEFL_TAG:-latest}" \
      "hefl-prometheus:${HEFL_TAG:-latest}" 2>/dev/null || true
    rm -rf docker/.env docker/.secrets "$SITES" "$TARGETS" ;;
  compose) shift; compose "$@" ;;
  *) sed -n '2,26p' "$0" >&2; exit 2 ;;
esac
