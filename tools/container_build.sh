#!/usr/bin/env bash
# Build the cluster's images: tools/container_build.sh [coordinator|hospital|prometheus]...
# (default: all three). hefl-coordinator and hefl-hospital come from docker/Dockerfile; their
# build context is only what they need (sent as a tar), so .venv, data and .git are never sent
# to the engine. hefl-prometheus is Debian's prometheus package (docker/prometheus/Dockerfile;
# it needs Debian's archive, OFFLINE does not apply). Environment:
#   BASE_IMAGE             base image of the hefl images (default python:3.11-slim)
#   PROMETHEUS_BASE_IMAGE  a Debian bookworm base for hefl-prometheus (default debian:bookworm-slim)
#   HEFL_TAG               image tag (default latest); images are hefl-<target>
#   OFFLINE=1              install the hefl images from docker/wheelhouse alone
set -euo pipefail
cd "$(dirname "$0")/.."
targets=("$@"); [ ${#targets[@]} -gt 0 ] || targets=(coordinator hospital prometheus)
paths=(docker/Dockerfile docker/entrypoint.sh docker/healthcheck.sh docker/pip-install.sh docker/ca
       docker/wheelhouse tools/build_pyfhel.py pyproject.toml README.md LICENSE
       common coordinator hospital_node hefl)
for target in "${targets[@]}"; do
  start=$(date +%s)
  image="hefl-$target:${HEFL_TAG:-latest}"
  log=${BUILD_LOG:-/tmp/hefl-build-$target.log}
  case "$target" in
    coordinator|hospital)
      base=${BASE_IMAGE:-python:3.11-slim}
      echo "[container_build] $image (base $base)" >&2
      tar -c --exclude='__pycache__' --exclude='*.pyc' "${paths[@]}" |
        docker build -f docker/Dockerfile --build-arg "BASE_IMAGE=$base" \
          --build-arg "OFFLINE=${OFFLINE:-0}" --target "$target" -t "$image" - >"$log" 2>&1 ||
        { tail -40 "$log" >&2; exit 1; } ;;
    prometheus)
      base=${PROMETHEUS_BASE_IMAGE:-debian:bookworm-slim}
      echo "[container_build] $image (base $base)" >&2
      tar -C docker/prometheus -c Dockerfile |
        docker build --build-arg "BASE_IMAGE=$base" -t "$image" - >"$log" 2>&1 ||
        { tail -40 "$log" >&2; exit 1; } ;;
    *) echo "error: unknown image '$target' (coordinator, hospital or prometheus)" >&2; exit 2 ;;
  esac
  size=$(docker image inspect -f '{{.Size}}' "$image")
  echo "[container_build] hefl-$target built in $(( $(date +%s) - start )) s, $(( size / 1000000 )) MB" >&2
done
