#!/usr/bin/env bash
# Start `jaxalign train` on every worker, in the background (nohup), logging to
# ~/jaxalign-logs/train-<worker hostname>.log and recording its pid in ~/jaxalign-logs/train.pid.
#   tpu_scripts/launch.sh --project P --zone Z --name N --config experiments/x.py --workdir gs://b/run
#       [--dry-run]
# --config is relative to the repo on the workers (~/jaxalign). On a pod slice --workdir should be a
# gs:// path, which every worker sees. Refuses to start while a previous run is alive on a worker.
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "$0")/common.sh"
parse_flags "$@"
require project zone name config workdir

train="jaxalign train --config $(quote "$CONFIG") --workdir $(quote "$WORKDIR")"
pid="$LOG_DIR/train.pid"
remote="set -e; mkdir -p \"$LOG_DIR\"; cd \"$REMOTE_DIR\"; export PATH=\"\$HOME/.local/bin:\$PATH\""
remote+="; if [ -f \"$pid\" ] && kill -0 \"\$(cat \"$pid\")\" 2>/dev/null; then"
remote+=" echo \"\$(hostname): a run is still alive (pid \$(cat \"$pid\")); stop.sh first\" >&2; exit 1; fi"
remote+="; nohup $train >>\"$LOG_DIR/train-\$(hostname).log\" 2>&1 </dev/null & echo \$! >\"$pid\""
ssh_all "launch $CONFIG on every worker" "$remote"
