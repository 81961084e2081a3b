#!/usr/bin/env bash
# Container engine for the tests and CI on a fresh Debian machine (as root), with no image
# registry reachable:
#   tools/container_engine.sh daemon      install Debian's docker.io + docker-compose, start dockerd
#   tools/container_engine.sh kubectl     make sure `kubectl kustomize` works (Debian's
#                                         kubernetes-client when no kubectl is installed)
#   tools/container_engine.sh standins    build local stand-ins for python:3.11-slim and
#                                         rabbitmq:3-management from Debian packages (cached by tag)
# Prints nothing on stdout but the stand-in tags (for `eval`-free use by callers).
set -euo pipefail
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=${DEBIAN_SUITE:-bookworm}
PY_TAG=${HEFL_STANDIN_PYTHON:-hefl-standin/python:3.11-slim}
MQ_TAG=${HEFL_STANDIN_RABBITMQ:-hefl-standin/rabbitmq:3-management}
log() { echo "[container_engine] $*" >&2; }

daemon() {
  if ! command -v dockerd >/dev/null || ! command -v docker-compose >/dev/null; then
    [ "$(id -u)" -eq 0 ] || { log "error: run as root or: sudo apt-get install docker.io docker-compose"; exit 1; }
    log "installing Debian's docker.io and docker-compose"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      docker.io docker-compose debootstrap >/dev/null
  fi
  if ! docker info >/dev/null 2>&1; then
    log "starting dockerd (log: /var/log/hefl-dockerd.log)"
    nohup dockerd --storage-driver=overlay2 >/var/log/hefl-dockerd.log 2>&1 &
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  fi
  docker info >/dev/null 2>&1 || { log "error: dockerd did not start; see /var/log/hefl-dockerd.log"; exit 1; }
  log "docker engine $(docker version --format '{{.Server.Version}}') is up"
}

kubectl_ok() {
  if ! command -v kubectl >/dev/null; then
    [ "$(id -u)" -eq 0 ] || { log "error: no kubectl; run as root or: sudo apt-get install kubernetes-client"; exit 1; }
    log "installing Debian's kubernetes-client (kubectl)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kubernetes-client >/dev/null
  fi
  kubectl kustomize --help >/dev/null 2>&1 || { log "error: $(command -v kubectl) has no 'kustomize' (need kubectl >= 1.14)"; exit 1; }
  log "kubectl: $(command -v kubectl)"
}

# rootfs TAG PACKAGES... : debootstrap a minbase rootfs with PACKAGES and import it as TAG
rootfs() {
  local tag=$1; shift
  if docker image inspect "$tag" >/dev/null 2>&1; then log "cached: $tag"; return; fi
  command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
  local dir; dir=$(mktemp -d /var/tmp/standin.XXXXXX)
  log "debootstrap $SUITE for $tag"
  debootstrap --variant=minbase --include="$(IFS=,; echo "$*")" "$SUITE" "$dir" "$MIRROR" >&2
  rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/archives/*.deb
  echo "deb $MIRROR $SUITE main" >"$dir/etc/apt/sources.list"
  "${IMPORT_SETUP:-true}" "$dir"
  tar -C "$dir" -c . | docker import "${IMPORT_CHANGES[@]}" - "$tag" >&2
  rm -rf "$dir"
}

standins() {
  IMPORT_CHANGES=(--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
                  --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]')
  IMPORT_SETUP=setup_python rootfs "$PY_TAG" python3.11 python3-venv python3-pip ca-certificates
  IMPORT_CHANGES=(--change 'ENV PATH=/usr/lib/rabbitmq/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
                  --change 'ENV LANG=C.UTF-8' --change 'ENV HOME=/var/lib/rabbitmq' --change 'ENV RABBITMQ_LOGS=-'
                  --change 'EXPOSE 5672 15672'
                  --change 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]'
                  --change 'CMD ["rabbitmq-server"]')
  IMPORT_SETUP=setup_rabbitmq rootfs "$MQ_TAG" rabbitmq-server ca-certificates
  echo "$PY_TAG"
  echo "$MQ_TAG"
}

# The official python image has `python` and `python3` on PATH; so does the stand-in.
setup_python() { ln -sf /usr/bin/python3 "$1/usr/local/bin/python"; }

# The official rabbitmq image loads /etc/rabbitmq/definitions.json when rabbitmq.conf says so
# and runs the node in the foreground as the rabbitmq user; the stand-in does the same.
setup_rabbitmq() {
  chroot "$1" rabbitmq-plugins --offline enable rabbitmq_management >&2 || \
    echo "[rabbitmq_management]." >"$1/etc/rabbitmq/enabled_plugins"
  cat >"$1/usr/local/bin/docker-entrypoint.sh" <<'SH'
#!/bin/sh
set -e
if [ "$(id -u)" = 0 ]; then
  chown -R rabbitmq:rabbitmq /var/lib/rabbitmq /var/log/rabbitmq 2>/dev/null || true
  exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups "$@"
fi
exec "$@"
SH
  chmod 755 "$1/usr/local/bin/docker-entrypoint.sh"
}

case "${1:-}" in
  daemon) daemon ;;
  kubectl) kubectl_ok ;;
  standins) standins ;;
  *) echo "usage: $0 daemon|kubectl|standins" >&2; exit 2 ;;
esac
