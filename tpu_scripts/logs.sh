#!/usr/bin/env bash
# Gather every worker's training log into a new local folder, one file per worker.
#   tpu_scripts/logs.sh --project P --zone Z --name N [--out DIR] [--workers K] [--dry-run]
#   tpu_scripts/logs.sh --workdir gs://b/run [--out DIR] [--dry-run]
# --out defaults to tpu-logs/<name>-<UTC time>; an existing non-empty folder is refused (nothing is
# overwritten). --workers defaults to the number of workers gcloud describes.
# With a gs:// --workdir the logs come from the bucket instead (<workdir>/logs/: train-<hostname>.log and
# exit-<hostname> of every worker, as launch.sh puts them there), which works after the VM is gone.
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "$0")/common.sh"
parse_flags "$@"
in_bucket || require project zone name
scope_flags
OUT="${OUT:-tpu-logs/${NAME:-$(basename "$WORKDIR")}-$(date -u +%Y%m%d-%H%M%S)}"
if [[ -d "$OUT" && -n "$(ls -A "$OUT")" ]]; then
  usage_error "--out $OUT exists and is not empty; give a new folder"
fi

if in_bucket; then
  ((DRY_RUN)) || mkdir -p "$OUT"
  run "copy the logs from $LOGS_URL" gcloud storage cp "$LOGS_URL/*" "$OUT/"
  ((DRY_RUN)) || echo "logs and exit statuses from $LOGS_URL in $OUT"
  exit 0
fi

if [[ -z "$WORKERS" ]]; then
  describe=(gcloud compute tpus tpu-vm describe "$NAME" "${SCOPE[@]}" "--format=value(networkEndpoints[].ipAddress)")
  show "$(quote "${describe[@]}")"
  if ((DRY_RUN)); then
    WORKERS=1
    echo "# dry run: --workers not given, showing worker 0 only"
  else
    ips="$("${describe[@]}")" || { echo "$SCRIPT: step 'count workers' failed" >&2; exit 1; }
    # gcloud's value() joins a list with ';': one address per worker.
    WORKERS="$(tr ';' '\n' <<<"$ips" | grep -c .)" || true
  fi
fi
[[ "$WORKERS" =~ ^[1-9][0-9]*$ ]] || usage_error "--workers must be a positive integer, got '$WORKERS'"

((DRY_RUN)) || mkdir -p "$OUT"
for ((i = 0; i < WORKERS; i++)); do
  run_to "$OUT/worker-$i.log" "gather the log of worker $i" gcloud compute tpus tpu-vm ssh "$NAME" "${SCOPE[@]}" \
    "--worker=$i" --command="cat \"$LOG_DIR\"/train-*.log"
done
((DRY_RUN)) || echo "logs of $WORKERS worker(s) in $OUT"
