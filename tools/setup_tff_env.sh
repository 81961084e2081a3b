#!/usr/bin/env bash
# Create the separate TensorFlow Federated environment used as the reference FedAvg engine.
#
#   tools/setup_tff_env.sh [VENV_DIR]        (default .venv-tff; `make tff-env` calls it)
#
# Why a separate environment: tensorflow-federated 0.87.0 (the newest release) needs Python
# < 3.12, tensorflow 2.14.*, numpy ~1.25 and jax == jaxlib == 0.4.14, while the main `.venv`
# runs TensorFlow 2.21 / Keras 3 and numpy 2 (which Pyfhel 3.5 needs). jaxlib 0.4.14 is not on
# PyPI, so a plain `pip install tensorflow-federated` cannot resolve. We install TFF's pinned
# requirements normally, then TFF itself, jax 0.4.14 and jaxlib 0.4.13 (the nearest release on
# PyPI; TFF's FedAvg path does not use jax) without dependency resolution.
#
# Idempotent: a stamp file in VENV_DIR holds this script's SHA-256; when it matches, the script
# returns at once. Any change to this file (for example a pin) rebuilds the environment from
# scratch. Never touches the main `.venv`. The interpreter is TFF_PYTHON if set, else python3, or
# python3.11/3.10/3.9 when python3 is newer than TFF supports.
set -euo pipefail

VENV=${1:-.venv-tff}
PYTHON_GIVEN=${TFF_PYTHON:+yes}
TFF_PYTHON=${TFF_PYTHON:-python3}
SCRIPT=$(readlink -f "${BASH_SOURCE[0]}")
STAMP="$VENV/.hefl-tff-env"
LOG="$VENV/setup.log"

fail() {
  echo "error: TFF environment ($VENV): $*" >&2
  exit 1
}
trap 'fail "setup failed at line $LINENO (exit $?); see the output above and $LOG"' ERR

# Step 1: TFF 0.87.0's own requirements (its METADATA), resolved normally from the index.
STEP1_PINS=(
  "tensorflow==2.14.1"
  "numpy==1.25.2"
  "absl-py==1.*,>=1.0"
  "attrs~=23.1"
  "cachetools~=5.3"
  "dm-tree==0.1.8"
  "dp-accounting==0.4.3"
  "google-vizier==0.1.11"
  "grpcio~=1.46"
  "ml-dtypes==0.2.*,>=0.2.0"
  "portpicker~=1.6"
  "scipy~=1.9.3"
  "tensorflow-model-optimization==0.7.5"
  "tensorflow-privacy==0.9.0"
  "tqdm~=4.64"
  "typing-extensions==4.5.*,>=4.5.0"
  "googleapis-common-protos==1.61.0"
)
# Step 2: installed with --no-deps (TFF's own jaxlib==0.4.14 pin cannot be satisfied from PyPI).
STEP2_PINS=(
  "tensorflow-federated==0.87.0"
  "jax==0.4.14"
  "jaxlib==0.4.13"
  "opt-einsum"
)

digest=$(sha256sum "$SCRIPT" | cut -d' ' -f1)
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$digest" && -x "$VENV/bin/python" ]]; then
  echo "TFF environment $VENV is up to date"
  exit 0
fi

supported() { # prints the interpreter's version if TFF 0.87 supports it
  local v
  v=$("$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || return 1
  case "$v" in 3.9 | 3.10 | 3.11) echo "$v" ;; *) return 1 ;; esac
}
if [[ -z "$PYTHON_GIVEN" ]] && ! supported "$TFF_PYTHON" >/dev/null; then
  for candidate in python3.11 python3.10 python3.9; do  # python3 is too new: look for an older one
    if command -v "$candidate" >/dev/null && supported "$candidate" >/dev/null; then
      TFF_PYTHON=$candidate
      break
    fi
  done
fi
version=$(supported "$TFF_PYTHON") ||
  fail "tensorflow-federated 0.87.0 needs Python 3.9-3.11 and '$TFF_PYTHON' is not one; set TFF_PYTHON=/path/to/python3.11"

if [[ -e "$VENV" ]]; then
  [[ -f "$VENV/pyvenv.cfg" ]] || fail "$VENV exists and is not a virtual environment; remove it or pass another folder"
  echo "rebuilding $VENV (pins or setup script changed)"
  rm -rf "$VENV"
fi

started=$SECONDS
echo "creating $VENV with $TFF_PYTHON ($version)"
"$TFF_PYTHON" -m venv "$VENV"
# Keep the environment out of git without touching the repository's .gitignore.
echo '*' >"$VENV/.gitignore"
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install --quiet --upgrade pip setuptools wheel >"$LOG" 2>&1 || fail "pip upgrade failed; see $LOG"
echo "step 1/3: TFF's pinned requirements (tensorflow 2.14.1, numpy 1.25, ...)"
"${PIP[@]}" install --quiet "${STEP1_PINS[@]}" >>"$LOG" 2>&1 || {
  tail -n 30 "$LOG" >&2
  fail "installing TFF's requirements failed; see $LOG"
}
echo "step 2/3: tensorflow-federated 0.87.0, jax 0.4.14, jaxlib 0.4.13 (--no-deps)"
"${PIP[@]}" install --quiet --no-deps "${STEP2_PINS[@]}" >>"$LOG" 2>&1 || {
  tail -n 30 "$LOG" >&2
  fail "installing tensorflow-federated failed; see $LOG"
}

echo "step 3/3: smoke check (import, then a 2-client weighted FedAvg round)"
# TFF starts a worker_binary child that outlives Python and keeps inherited stdout/stderr
# open, so the check runs in its own session with output to a file, and its process group is
# ended afterwards: nothing is left holding this script's (or CI's) pipes.
"$VENV/bin/python" - "$VENV/smoke-check.log" <<'PY' || fail "smoke check failed; see $VENV/smoke-check.log"
import os, signal, subprocess, sys

CHECK = r'''
import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np, tensorflow as tf, tensorflow_federated as tff
spec = (tf.TensorSpec([None, 3], tf.float32), tf.TensorSpec([None, 1], tf.float32))
def model_fn():
    keras_model = tf.keras.Sequential([tf.keras.layers.Dense(1, "sigmoid", input_shape=(3,))])
    return tff.learning.models.from_keras_model(
        keras_model, loss=tf.keras.losses.BinaryCrossentropy(), input_spec=spec)
process = tff.learning.algorithms.build_weighted_fed_avg(
    model_fn,
    client_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=0.1),
    server_optimizer_fn=tff.learning.optimizers.build_sgdm(learning_rate=1.0))
rng = np.random.default_rng(0)
clients = [
    tf.data.Dataset.from_tensor_slices(
        (rng.random((n, 3), dtype=np.float32), (rng.random((n, 1)) > 0.5).astype(np.float32))
    ).batch(4)
    for n in (6, 10)
]
result = process.next(process.initialize(), clients)
examples = int(result.metrics["client_work"]["train"]["num_examples"])
assert examples == 16, examples
print("TFF", tff.__version__, "TF", tf.__version__, "numpy", np.__version__, "FedAvg OK")
# End and reap our children (TFF's worker_binary) so that no zombie or orphan is left.
for pid in os.listdir("/proc"):
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        continue
    if pid.isdigit() and stat.rsplit(")", 1)[-1].split()[1] == str(os.getpid()):
        try:  # it may have ended (and been reaped) since /proc was listed
            os.kill(int(pid), 9)
            os.waitpid(int(pid), 0)
        except (ProcessLookupError, ChildProcessError):
            pass
'''

with open(sys.argv[1], "w") as log:
    child = subprocess.Popen(
        [sys.executable, "-c", CHECK],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        code = child.wait(timeout=600)
    finally:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
with open(sys.argv[1]) as log:
    lines = log.read().splitlines()
print("  " + (lines[-1] if lines else "(no output)"))
if code != 0 and lines and lines[-1].endswith("FedAvg OK"):
    # The round ran and was checked; only the process's exit failed (seen once in CI: TF or
    # gRPC crashing at interpreter shutdown). Say so, and count the check as passed.
    print(f"  (the check process then exited with status {code}; the check itself passed)")
    code = 0
sys.exit(code)
PY

echo "$digest" >"$STAMP"
size=$(du -sh "$VENV" | cut -f1)
echo "TFF environment ready: $VENV ($size, $((SECONDS - started)) s)"
