#!/usr/bin/env bash
# Build the hefl images: tools/container_build.sh [coordinator|hospital]...  (default: both)
# The build context is only what the images need (sent as a tar), so .venv, data and .git are
# never sent to the engine. Environment:
#   BASE_IMAGE   base image for builder and runtime (default python:3.11-slim)
#   HEFL_TAG     image tag (default latest); images are hefl-coordinator and hefl-hospital
#   OFFLINE=1    install from docker/wheelhouse alone
set -euo pipefail
cd "$(dirname "$0")/.."
targets=("$@"); [ ${#targets[@]} -gt 0 ] || targets=(coordinator hospital)
args=(--build-arg "BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim}" --build-arg "OFFLINE=${OFFLINE:-0}")
paths=(docker/Dockerfile docker/entrypoint.sh docker/healthcheck.sh docker/pip-install.sh docker/ca
       docker/wheelhouse tools/build_pyfhel.py pyproject.toml README.md LICENSE
       common coordinator hospital_node hefl)
for target in "${targets[@]}"; do
  start=$(date +%s)
  echo "[container_build] hefl-$target:${HEFL_TAG:-latest} (base ${BASE_IMAGE:-python:3.11-slim})" >&2
  tar -c --exclude='__pycache__' --exclude='*.pyc' "${paths[@]}" |
    docker build -f docker/Dockerfile "${args[@]}" --target "$target" \
      -t "hefl-$target:${HEFL_TAG:-latest}" - >"${BUILD_LOG:-/tmp/hefl-build-$target.log}" 2>&1 || { tail -40 "${BUILD_LOG:-/tmp/hefl-build-$target.log}" >&2; exit 1; }
  size=$(docker image inspect -f '{{.Size}}' "hefl-$target:${HEFL_TAG:-latest}")
  echo "[container_build] hefl-$target built in $(( $(date +%s) - start )) s, $(( size / 1000000 )) MB" >&2
done
