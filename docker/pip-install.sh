#!/usr/bin/env bash
# hefl-pip-install VENV ARGS...: pip install into VENV, preferring the local wheelhouse.
# OFFLINE=1 installs from /wheelhouse alone; otherwise the package index is used as well.
set -euo pipefail
venv=$1; shift
if [ "${OFFLINE:-0}" = 1 ]; then
  exec "$venv/bin/pip" install --no-index --find-links /wheelhouse "$@"
fi
exec "$venv/bin/pip" install --find-links /wheelhouse "$@"
