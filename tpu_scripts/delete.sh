#!/usr/bin/env bash
# Delete a TPU VM, or with --queued the queued resource and its node (--force).
#   tpu_scripts/delete.sh --project P --zone Z --name N [--queued] [--yes] [--dry-run]
# gcloud asks for confirmation unless --yes (gcloud --quiet).
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "$0")/common.sh"
parse_flags "$@"
require project zone name
scope_flags

if ((QUEUED)); then
  cmd=(gcloud compute tpus queued-resources delete "$NAME" "${SCOPE[@]}" --force)
else
  cmd=(gcloud compute tpus tpu-vm delete "$NAME" "${SCOPE[@]}")
fi
((YES)) && cmd+=(--quiet)
run "delete $NAME" "${cmd[@]}"
