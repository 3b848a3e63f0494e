#!/usr/bin/env bash
# Idempotent MinIO setup for videogen: the bucket (private), an expiry lifecycle rule on jobs/,
# one least-privilege policy per pipeline stage and one user per stage. Run by minio/compose.yaml
# (local) and by the Terraform minio module's init Job (Kubernetes); safe to re-run at any time.
#
# Environment:
#   MINIO_ENDPOINT         S3 API URL of the MinIO server            (default http://minio:9000)
#   MINIO_ROOT_USER        MinIO root credentials                    (required)
#   MINIO_ROOT_PASSWORD
#   VIDEOGEN_BUCKET        bucket name                               (default videogen)
#   VIDEOGEN_EXPIRE_DAYS   objects under jobs/ expire after N days   (default 7)
#   POLICY_DIR             <stage>.json policies, generated from schemas/ by
#                          infra/tools/gen_infra.py                 (default: ./policies beside this script)
#   POLICY_BUCKET          bucket name the policy files were written for (default videogen)
#   VIDEOGEN_STAGES        users to create, videogen-<stage>         (default: every policy but provision)
#   VIDEOGEN_S3_SECRET_<STAGE>  secret key of stage <STAGE>'s user (upper case, e.g. ..._RUNNER).
#                          When unset and CREDS_DIR is set, one is generated (and kept in CREDS_DIR).
#   CREDS_DIR              write <user>.env files (VIDEOGEN_S3_ACCESS_KEY/..._SECRET_KEY) here
#   VIDEOGEN_LOCAL_USER    1: also create videogen-local with every policy (one-process local dev)
set -euo pipefail

MINIO_ENDPOINT=${MINIO_ENDPOINT:-http://minio:9000}
: "${MINIO_ROOT_USER:?MINIO_ROOT_USER is required}"
: "${MINIO_ROOT_PASSWORD:?MINIO_ROOT_PASSWORD is required}"
BUCKET=${VIDEOGEN_BUCKET:-videogen}
EXPIRE_DAYS=${VIDEOGEN_EXPIRE_DAYS:-7}
POLICY_DIR=${POLICY_DIR:-$(cd "$(dirname "$0")" && pwd)/policies}
POLICY_BUCKET=${POLICY_BUCKET:-videogen}
CREDS_DIR=${CREDS_DIR:-}
LOCAL_USER=${VIDEOGEN_LOCAL_USER:-0}
JOBS_PREFIX="jobs/"                    # schemas.names.job_prefix(); checked by infra/tools/tfcheck.py
LIFECYCLE_RULE_ID="videogen-expire-jobs"
ALIAS=videogen
MC_CONFIG_DIR=${MC_CONFIG_DIR:-${TMPDIR:-/tmp}/.mc}

log() { printf '%s minio-init: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
mc() { command mc --config-dir "$MC_CONFIG_DIR" --quiet --no-color "$@"; }

[[ "$EXPIRE_DAYS" =~ ^[1-9][0-9]*$ ]] || die "VIDEOGEN_EXPIRE_DAYS must be a positive integer, got '$EXPIRE_DAYS'"
[[ "$BUCKET" =~ ^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$ ]] || die "invalid bucket name '$BUCKET'"
[ -d "$POLICY_DIR" ] || die "POLICY_DIR $POLICY_DIR does not exist"
mkdir -p "$MC_CONFIG_DIR"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# ---- wait for the server ---------------------------------------------------------------------
for attempt in $(seq 1 60); do
  if mc alias set "$ALIAS" "$MINIO_ENDPOINT" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null 2>&1 \
     && mc admin info "$ALIAS" >/dev/null 2>&1; then
    break
  fi
  [ "$attempt" -eq 60 ] && die "MinIO at $MINIO_ENDPOINT not ready after 5 minutes"
  sleep 5
done
log "connected to $MINIO_ENDPOINT"

# ---- bucket + lifecycle ----------------------------------------------------------------------
mc mb --ignore-existing "$ALIAS/$BUCKET" >/dev/null
mc anonymous set none "$ALIAS/$BUCKET" >/dev/null
cat >"$work/lifecycle.json" <<EOF
{
  "Rules": [
    {
      "ID": "$LIFECYCLE_RULE_ID",
      "Status": "Enabled",
      "Filter": {"Prefix": "$JOBS_PREFIX"},
      "Expiration": {"Days": $EXPIRE_DAYS}
    }
  ]
}
EOF
mc ilm rule import "$ALIAS/$BUCKET" <"$work/lifecycle.json" >/dev/null  # replaces all rules: idempotent
log "bucket $BUCKET: private, objects under $JOBS_PREFIX expire after $EXPIRE_DAYS days"

# ---- policies ----------------------------------------------------------------------------------
all_policies=()
default_stages=()
shopt -s nullglob
for f in "$POLICY_DIR"/*.json; do
  stage=$(basename "$f" .json)
  doc=$(<"$f")
  if [ "$BUCKET" != "$POLICY_BUCKET" ]; then  # re-target the documents at this bucket
    doc=${doc//"arn:aws:s3:::$POLICY_BUCKET/"/"arn:aws:s3:::$BUCKET/"}
    doc=${doc//"arn:aws:s3:::$POLICY_BUCKET\""/"arn:aws:s3:::$BUCKET\""}
  fi
  printf '%s\n' "$doc" >"$work/$stage.json"
  mc admin policy create "$ALIAS" "videogen-$stage" "$work/$stage.json" >/dev/null  # create or replace
  all_policies+=("videogen-$stage")
  [ "$stage" = provision ] || default_stages+=("$stage")
done
shopt -u nullglob
[ "${#all_policies[@]}" -gt 0 ] || die "no policies in $POLICY_DIR"
log "policies: ${all_policies[*]}"

# ---- users -------------------------------------------------------------------------------------
random_secret() { head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 40; }

secret_for() {  # secret_for <user> <env var name>
  local user=$1 var=$2 value=${!2:-}
  if [ -z "$value" ] && [ -n "$CREDS_DIR" ] && [ -f "$CREDS_DIR/$user.env" ]; then
    local k v
    while IFS='=' read -r k v; do
      if [ "$k" = VIDEOGEN_S3_SECRET_KEY ]; then value=$v; fi
    done <"$CREDS_DIR/$user.env"
  fi
  if [ -z "$value" ]; then
    [ -n "$CREDS_DIR" ] || die "$var is not set (and no CREDS_DIR to generate one into)"
    value=$(random_secret)
  fi
  [ "${#value}" -ge 8 ] || die "$var must be at least 8 characters"
  printf '%s' "$value"
}

attach() {  # attach <user> <policy>...; "already attached" is success
  local user=$1 out
  shift
  if ! out=$(mc admin policy attach "$ALIAS" "$@" --user "$user" 2>&1); then
    case "$out" in
      *already*|*"no change"*) ;;
      *) die "attaching $* to $user: $out" ;;
    esac
  fi
}

write_creds() {  # write_creds <user> <secret>
  [ -n "$CREDS_DIR" ] || return 0
  mkdir -p "$CREDS_DIR"
  umask 077
  printf 'VIDEOGEN_S3_ACCESS_KEY=%s\nVIDEOGEN_S3_SECRET_KEY=%s\n' "$1" "$2" >"$CREDS_DIR/$1.env"
}

read -r -a stages <<<"${VIDEOGEN_STAGES:-${default_stages[*]}}"
for stage in "${stages[@]}"; do
  [ -f "$POLICY_DIR/$stage.json" ] || die "no policy for stage '$stage' in $POLICY_DIR"
  user="videogen-$stage"
  secret=$(secret_for "$user" "VIDEOGEN_S3_SECRET_$(printf '%s' "$stage" | tr '[:lower:]-' '[:upper:]_')")
  mc admin user add "$ALIAS" "$user" "$secret" >/dev/null  # create or reset the secret
  attach "$user" "videogen-$stage"
  write_creds "$user" "$secret"
  log "user $user -> policy videogen-$stage"
done

if [ "$LOCAL_USER" = 1 ]; then
  user=videogen-local
  secret=$(secret_for "$user" VIDEOGEN_S3_SECRET_LOCAL)
  mc admin user add "$ALIAS" "$user" "$secret" >/dev/null
  attach "$user" "${all_policies[@]}"
  write_creds "$user" "$secret"
  log "user $user -> ${all_policies[*]} (all stages, for a one-process local stack)"
fi

log "done"
