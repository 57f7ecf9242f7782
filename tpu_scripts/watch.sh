#!/usr/bin/env bash
# Show the state of a TPU VM and the end of one worker's training log.
#   tpu_scripts/watch.sh --project P --zone Z --name N [--worker 0] [--lines 40] [--follow] [--dry-run]
#   tpu_scripts/watch.sh --project P --zone Z --name N --queued [--dry-run]
# --queued shows the queued resource's state only (its node may not exist yet); --follow keeps tailing.
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "$0")/common.sh"
parse_flags "$@"
require project zone name
scope_flags
[[ "$LINES" =~ ^[0-9]+$ ]] || usage_error "--lines must be a number, got '$LINES'"

if ((QUEUED)); then
  run "describe queued resource $NAME" gcloud compute tpus queued-resources describe "$NAME" "${SCOPE[@]}" \
    "--format=value(state.state)"
  exit 0
fi
run "describe TPU VM $NAME" gcloud compute tpus tpu-vm describe "$NAME" "${SCOPE[@]}" "--format=value(state)"
tail_flags="-n $LINES"
((FOLLOW)) && tail_flags+=" -F"
run "tail the log of worker $WORKER" gcloud compute tpus tpu-vm ssh "$NAME" "${SCOPE[@]}" "--worker=$WORKER" \
  --command="tail $tail_flags \"$LOG_DIR\"/train-*.log"
