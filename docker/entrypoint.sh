#!/bin/sh
# Entry point of the hefl images: the first argument names a container role, which runs one
# `hefl` subcommand. It decides nothing: what each role receives and which identity a site
# runs as is decided (and tested) in hefl; settings come from the environment (HEFL_<FLAG>, see
# docs/configuration.md) and from the arguments after the role.
#   keygen        hefl keys-cluster       one-shot key ceremony of the compose cluster
#   install-keys  hefl keys-install       one-shot: one site's share into that site's key volume
#   partition     hefl partition          one-shot split of $HEFL_DATASET into $HEFL_HOSPITALS shards
#   coordinator   hefl coordinator
#   hospital      hefl hospital-replica   the site $HEFL_HOSPITAL, its shard from $HEFL_SHARDS
#   unpack-keys   hefl keys-unpack        Kubernetes init container
#   anything else is run as is (e.g. `hefl --help`, `sh`).
# $HEFL_ARGS (run flags: rounds, model) is added to coordinator and hospital, so both agree.
# The broker password is never an environment variable: hefl reads it from the file that
# $HEFL_BROKER_PASSWORD_FILE names (a compose secret, a Kubernetes Secret). The broker is
# amqps:// and trusted through the cluster's CA certificate that $HEFL_BROKER_CA names.
set -eu
role=${1:-}
[ "$#" -eq 0 ] || shift
case "$role" in
  keygen) exec hefl keys-cluster "$@" ;;
  install-keys) exec hefl keys-install "$@" ;;
  partition) exec hefl partition "$@" ;;
  # shellcheck disable=SC2086  # HEFL_ARGS is a list of flags
  coordinator) exec hefl coordinator ${HEFL_ARGS:-} "$@" ;;
  # shellcheck disable=SC2086
  hospital) exec hefl hospital-replica ${HEFL_ARGS:-} "$@" ;;
  unpack-keys) exec hefl keys-unpack "$@" ;;
  '') exec hefl --help ;;
  *) exec "$role" "$@" ;;
esac
