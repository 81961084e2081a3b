#!/bin/sh
# Entry point of the hefl images: the first argument names a container role, which runs one
# `hefl` subcommand. It decides nothing: what each role receives and which identity a replica
# takes is decided (and tested) in hefl; settings come from the environment (HEFL_<FLAG>, see
# docs/configuration.md) and from the arguments after the role.
#   keygen       hefl keys-cluster       one-shot key ceremony of the compose cluster
#   partition    hefl partition          one-shot split of $HEFL_DATASET into $HEFL_HOSPITALS shards
#   coordinator  hefl coordinator
#   hospital     hefl hospital-replica   finds its identity ($HEFL_IDENTITY) and shard, then runs
#   unpack-keys  hefl keys-unpack        Kubernetes init container
#   anything else is run as is (e.g. `hefl --help`, `sh`).
# $HEFL_ARGS (run flags: rounds, model) is added to coordinator and hospital, so both agree.
set -eu
if [ -n "${HEFL_BROKER_URL_FILE:-}" ]; then
  HEFL_BROKER_URL=$(cat "$HEFL_BROKER_URL_FILE"); export HEFL_BROKER_URL
fi
role=${1:-}
[ "$#" -eq 0 ] || shift
case "$role" in
  keygen) exec hefl keys-cluster "$@" ;;
  partition) exec hefl partition "$@" ;;
  # shellcheck disable=SC2086  # HEFL_ARGS is a list of flags
  coordinator) exec hefl coordinator ${HEFL_ARGS:-} "$@" ;;
  # shellcheck disable=SC2086
  hospital) exec hefl hospital-replica ${HEFL_ARGS:-} "$@" ;;
  unpack-keys) exec hefl keys-unpack "$@" ;;
  '') exec hefl --help ;;
  *) exec "$role" "$@" ;;
esac
