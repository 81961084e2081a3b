#!/bin/sh
# Entry point of the hefl images. The first argument chooses the role:
#   keygen       one-shot key ceremony: hospital bundle (with the HE secret key) into /keys,
#                coordinator bundle (public HE material only) into /coordinator-keys
#   partition    one-shot: split $HEFL_SOURCE_CSV into $HEFL_MAX_HOSPITALS shards in /shards
#   coordinator  `hefl coordinator`
#   hospital     claim an identity and its shard, then `hefl hospital`
#   unpack-keys  (Kubernetes init container) lay out the flat key Secret mounted at /secret
#                into /keys; a hospital gets only its own signing key
#   anything else is run as is (e.g. `hefl --help`, `sh`).
# $HEFL_ARGS (run flags: rounds, model) is appended to coordinator and hospital, so both agree.
set -eu
MAX=${HEFL_MAX_HOSPITALS:-8}
log() { echo "entrypoint role=${role:-?} $*" >&2; }

keygen() {
  if [ -f /keys/identities/trust.json ] && [ -f /coordinator-keys/identities/trust.json ]; then
    log "event=keygen_skipped reason=keys-exist"; return 0
  fi
  work=$(mktemp -d /tmp/ceremony.XXXXXX)
  hefl keygen --out "$work" --hospitals "$MAX" --scheme "${HEFL_SCHEME:-ckks}"
  # Hospitals: HE secret bundle, the hospitals' signing keys, trust.json.
  mkdir -p /keys/identities /coordinator-keys/identities
  cp -a "$work/he-hospital" /keys/
  cp -a "$work/identities/trust.json" /keys/identities/
  for d in "$work"/identities/hospital-*; do cp -a "$d" /keys/identities/; done
  # Coordinator: public HE bundle, its own signing key, trust.json. Never a secret key.
  cp -a "$work/he-coordinator" /coordinator-keys/
  cp -a "$work/identities/trust.json" /coordinator-keys/identities/
  cp -a "$work/identities/coordinator" /coordinator-keys/identities/
  rm -rf "$work"
  log "event=keygen_done hospitals=$MAX"
}

partition() {
  if [ -f /shards/partition.json ]; then log "event=partition_skipped reason=exists"; return 0; fi
  tmp=$(mktemp -d /shards/.partition.XXXXXX)
  hefl partition --csv "${HEFL_SOURCE_CSV:-/data/diabetic_data.csv.gz}" --out "$tmp" \
    --hospitals "$MAX" --partition "${HEFL_PARTITION:-iid}" --seed "${HEFL_SEED:-42}" \
    ${HEFL_SCHEMA:+--schema "$HEFL_SCHEMA"}
  for f in "$tmp"/*.csv; do mv "$f" /shards/; done
  mv "$tmp/partition.json" /shards/partition.json && rm -rf "$tmp"   # the manifest last: "done"
  log "event=partition_done hospitals=$MAX"
}

# Identity: $HEFL_HOSPITAL if set; in a StatefulSet the pod ordinal (name-K -> hospital-(K+1));
# otherwise claim the first free /claims/hospital-K by an atomic mkdir in the shared volume. A
# claim records its container (hostname) and a heartbeat; a restarted container keeps its claim,
# and a claim whose heartbeat is older than $HEFL_CLAIM_TTL seconds is taken over.
claim() {
  me=${HOSTNAME:-$(cat /etc/hostname)}
  ttl=${HEFL_CLAIM_TTL:-90}
  for d in /claims/hospital-*; do
    [ -d "$d" ] && [ "$(cat "$d/owner" 2>/dev/null)" = "$me" ] && { basename "$d"; return 0; }
  done
  k=1
  while [ "$k" -le "$MAX" ]; do
    dir=/claims/hospital-$k
    if mkdir "$dir" 2>/dev/null; then echo "$me" >"$dir/owner"; echo "hospital-$k"; return 0; fi
    if [ -n "$(find "$dir" -maxdepth 1 -name heartbeat -mmin "+$(( (ttl + 59) / 60 ))" 2>/dev/null)" ] &&
       mv "$dir" "/claims/.stale-hospital-$k-$me-$$" 2>/dev/null; then
      rm -rf "/claims/.stale-hospital-$k-$me-$$"
      continue   # retry the same K with mkdir
    fi
    k=$((k + 1))
  done
  return 1
}

hospital_identity() {
  if [ -n "${HEFL_HOSPITAL:-}" ]; then echo "$HEFL_HOSPITAL"; return 0; fi
  if [ "${HEFL_IDENTITY:-claim}" = ordinal ]; then
    ordinal=${HOSTNAME##*-}
    case "$ordinal" in ''|*[!0-9]*) log "event=identity_failed reason=no-ordinal host=$HOSTNAME"; exit 2 ;; esac
    echo "hospital-$((ordinal + 1))"; return 0
  fi
  claim || { log "event=identity_failed reason=all-$MAX-identities-claimed"; exit 2; }
}

# Kubernetes Secrets are flat: he-hospital.<file>, he-coordinator.<file>, trust.json,
# identity.<name>.pem. Rebuild the folder layout of `hefl keygen` (see README, Key material).
unpack_keys() {
  src=${HEFL_SECRET_DIR:-/secret}
  own=${2:-}
  mkdir -p /keys/identities
  for f in "$src"/*; do
    base=$(basename "$f")
    case "$base" in
      he-hospital.*|he-coordinator.*)
        dir=${base%%.*}; mkdir -p "/keys/$dir"; cp "$f" "/keys/$dir/${base#*.}" ;;
      trust.json) cp "$f" /keys/identities/trust.json ;;
      identity.*.pem)
        name=${base#identity.}; name=${name%.pem}
        if [ -z "$own" ] || [ "$name" = "$own" ]; then
          mkdir -p "/keys/identities/$name"; cp "$f" "/keys/identities/$name/signing_key.pem"
        fi ;;
    esac
  done
  chmod -R go-rwx /keys
  log "event=keys_unpacked own=${own:-all}"
}

role=${1:-}
if [ -n "${HEFL_BROKER_URL_FILE:-}" ]; then
  HEFL_BROKER_URL=$(cat "$HEFL_BROKER_URL_FILE"); export HEFL_BROKER_URL
fi
case "$role" in
  unpack-keys)
    if [ "${2:-}" = hospital ]; then unpack_keys "" "$(hospital_identity)"; else unpack_keys "" coordinator; fi ;;
  keygen) keygen ;;
  partition) partition ;;
  coordinator)
    shift
    # shellcheck disable=SC2086  # HEFL_ARGS is a list of flags
    exec hefl coordinator ${HEFL_ARGS:-} "$@" ;;
  hospital)
    shift
    HEFL_HOSPITAL=$(hospital_identity)
    HEFL_CSV=${HEFL_CSV:-/shards/$HEFL_HOSPITAL.csv}
    export HEFL_HOSPITAL HEFL_CSV
    [ -f "$HEFL_CSV" ] || { log "event=identity_failed hospital=$HEFL_HOSPITAL reason=no-shard csv=$HEFL_CSV"; exit 3; }
    log "event=identity_claimed hospital=$HEFL_HOSPITAL csv=$HEFL_CSV"
    if [ -d "/claims/$HEFL_HOSPITAL" ]; then
      ( while :; do touch "/claims/$HEFL_HOSPITAL/heartbeat" 2>/dev/null || exit 0; sleep 15; done ) &
    fi
    # shellcheck disable=SC2086
    exec hefl hospital ${HEFL_ARGS:-} --out /work/out "$@" ;;
  *) exec "$@" ;;
esac
