#!/usr/bin/env bash
# Create a TPU VM or pod slice.
#   tpu_scripts/create.sh --project P --zone Z --name N --type v4-8 --version tpu-ubuntu2204-base
#       [--spot] [--queued [--spot | --best-effort]] [--dry-run]
# Without --queued: `gcloud compute tpus tpu-vm create`, which fails at once when the zone has no capacity.
# With --queued: a queued resource (named like the node) that waits for capacity; see watch.sh --queued.
# --best-effort only exists in `gcloud alpha` and only for queued resources.
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "$0")/common.sh"
parse_flags "$@"
require project zone name type version
scope_flags

if ((QUEUED)); then
  cmd=(gcloud compute tpus queued-resources create "$NAME" "${SCOPE[@]}" "--node-id=$NAME"
    "--accelerator-type=$TYPE" "--runtime-version=$VERSION")
  if ((SPOT)); then
    cmd+=(--spot)
  elif ((BEST_EFFORT)); then
    cmd=(gcloud alpha "${cmd[@]:1}" --best-effort)
  fi
  run "create queued resource $NAME" "${cmd[@]}"
else
  ((BEST_EFFORT)) && usage_error "--best-effort needs --queued"
  cmd=(gcloud compute tpus tpu-vm create "$NAME" "${SCOPE[@]}" "--accelerator-type=$TYPE" "--version=$VERSION")
  ((SPOT)) && cmd+=(--spot)
  run "create TPU VM $NAME" "${cmd[@]}"
fi
