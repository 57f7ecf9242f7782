#!/usr/bin/env bash
# Start `jaxalign train` on every worker, in the background (nohup), logging to
# ~/jaxalign-logs/train-<worker hostname>.log and recording its pid in ~/jaxalign-logs/train.pid.
#   tpu_scripts/launch.sh --project P --zone Z --name N --config experiments/x.py --workdir gs://b/run
#       [--dry-run]
# --config is relative to the repo on the workers (~/jaxalign). On a pod slice --workdir should be a
# gs:// path, which every worker sees. Refuses to start while a previous run is alive on a worker.
# With a gs:// --workdir each worker also copies its log to <workdir>/logs/train-<hostname>.log every
# TPU_LOG_EVERY seconds (default 60) and at the end, then writes jaxalign's exit status to
# <workdir>/logs/exit-<hostname> ("0", "1", ...; "<status> SIGTERM" when a SIGTERM stopped the run).
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "$0")/common.sh"
parse_flags "$@"
require project zone name config workdir
[[ "$LOG_EVERY" =~ ^[0-9]+([.][0-9]+)?$ ]] || usage_error "TPU_LOG_EVERY must be a number of seconds"

train="jaxalign train --config $(quote "$CONFIG") --workdir $(quote "$WORKDIR")"
pid="$LOG_DIR/train.pid"
remote="set -e; mkdir -p \"$LOG_DIR\"; cd \"$REMOTE_DIR\"; export PATH=\"\$HOME/.local/bin:\$PATH\""
remote+="; if [ -f \"$pid\" ] && kill -0 \"\$(cat \"$pid\")\" 2>/dev/null; then"
remote+=" echo \"\$(hostname): a run is still alive (pid \$(cat \"$pid\")); stop.sh first\" >&2; exit 1; fi"
if in_bucket; then
  # The keeper, run by bash -c on every worker with (logs URL, seconds, log file, train command...): its pid
  # is the run's pid. It runs the command, copies the log up every few seconds (a copy under way is let
  # finish, so that no older copy lands after the last one) and at the end, passes a SIGTERM (stop.sh, a
  # preemption) on to jaxalign, and records jaxalign's exit status. A SIGTERM cuts a `wait` short (status
  # 143), so it waits again (127: nothing left to wait for) for the real status.
  mapfile -t lines <<'KEEPER'
to=$1 every=$2 log=$3; shift 3; host=$(hostname); term=""
up() { gcloud storage cp "$1" "$to/${1##*/}" >/dev/null 2>&1 || echo "tpu_scripts: cannot copy $1 to $to"; }
uploads() { trap end_uploads TERM; while :; do sleep "$every" & nap=$!; wait "$nap"; up "$log"; done; }
end_uploads() { kill "$nap" 2>/dev/null; exit 0; }
on_term() { term=" SIGTERM" woke=1; kill -TERM "$child" 2>/dev/null; }
"$@" & child=$!; trap on_term TERM; uploads & uploader=$!
rc=127 woke=1; while [ -n "$woke" ]; do woke=""; wait "$child"; s=$?; [ "$s" = 127 ] || rc=$s; done
kill "$uploader" 2>/dev/null; wait "$uploader"; echo "tpu_scripts: jaxalign train exited with $rc$term"
up "$log"; echo "$rc$term" >"${log%/*}/exit-$host"; up "${log%/*}/exit-$host"
KEEPER
  printf -v keeper '%s; ' "${lines[@]}"
  remote+="; gcloud storage rm $(quote "$LOGS_URL")/exit-\$(hostname) >/dev/null 2>&1 || true"
  remote+="; log=\"$LOG_DIR/train-\$(hostname).log\""
  remote+="; nohup bash -c $(quote "${keeper%; }") keeper $(quote "$LOGS_URL") $(quote "$LOG_EVERY") \"\$log\" $train"
  remote+=" >>\"\$log\" 2>&1 </dev/null & echo \$! >\"$pid\""
else
  remote+="; nohup $train >>\"$LOG_DIR/train-\$(hostname).log\" 2>&1 </dev/null & echo \$! >\"$pid\""
fi
ssh_all "launch $CONFIG on every worker" "$remote"
