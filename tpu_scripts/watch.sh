#!/usr/bin/env bash
# Show the state of a TPU VM and the end of one worker's training log.
#   tpu_scripts/watch.sh --project P --zone Z --name N [--worker 0] [--lines 40] [--follow] [--dry-run]
#   tpu_scripts/watch.sh --project P --zone Z --name N --queued [--dry-run]
#   tpu_scripts/watch.sh --workdir gs://b/run [--follow [--poll 60]] [--dry-run]
# --queued shows the queued resource's state only (its node may not exist yet); --follow keeps tailing.
# With a gs:// --workdir (and no --queued) the progress comes from the bucket, no ssh, so it works after
# the VM is gone: the last row of <workdir>/metrics.jsonl and the workers' exit files (launch.sh writes
# them when jaxalign ends); --follow looks again every --poll seconds until an exit file is there.
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "$0")/common.sh"
parse_flags "$@"

if in_bucket && ! ((QUEUED)); then
  metrics=(gcloud storage cat --range=-8192 "${WORKDIR%/}/metrics.jsonl")  # the end of it is enough
  exits=(gcloud storage cat --display-url "$LOGS_URL/exit-*")
  show "$(quote "${exits[@]}")"
  show "$(quote "${metrics[@]}") | tail -n 1"
  ((DRY_RUN)) && exit 0
  seen="none"
  while :; do
    ended="$("${exits[@]}" 2>/dev/null)" || ended=""  # first: the last rows come before the exit files
    row="$("${metrics[@]}" 2>/dev/null | tail -n 1)" || row=""
    [[ "$row" == "$seen" ]] || echo "${row:-no metrics row in ${WORKDIR%/}/metrics.jsonl yet}"
    seen="$row"
    [[ -z "$ended" ]] || { echo "$ended"; exit 0; }  # the run has ended
    ((FOLLOW)) || { echo "no exit file in $LOGS_URL yet: the run has not ended"; exit 0; }
    sleep "$POLL"
  done
fi

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
