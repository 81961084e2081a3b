#!/usr/bin/env bash
# Fill docker/wheelhouse from this machine, for image builds behind TLS-intercepting proxies or
# without internet: the cached Pyfhel wheel (tools/build_pyfhel.py) and every dependency of
# hefl for CPython 3.11 on manylinux x86_64, downloaded with this machine's pip configuration,
# plus tensorflow-cpu in pyproject's TensorFlow versions (the hospital image installs it instead
# of tensorflow; docker/Dockerfile).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
dest=docker/wheelhouse
mkdir -p "$dest"
"$PY" tools/build_pyfhel.py --wheel-dir "${WHEEL_CACHE:-$HOME/.cache/hefl/wheels}" |
  xargs -I{} cp {} "$dest/"
deps=$("$PY" -c "import tomllib; deps = [d for d in tomllib.load(open('pyproject.toml','rb'))['project']['dependencies'] if not d.lower().startswith('pyfhel')]; \
print('\n'.join([*deps, *('tensorflow-cpu' + d[len('tensorflow'):] for d in deps if d.lower().startswith('tensorflow'))]))")
# shellcheck disable=SC2086
"$PY" -m pip download -q -d "$dest" --only-binary=:all: --python-version 3.11 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_28_x86_64 \
  --implementation cp setuptools wheel pip $(echo "$deps" | tr '\n' ' ')
echo "[container_wheelhouse] $(ls "$dest"/*.whl | wc -l) wheels in $dest" >&2
