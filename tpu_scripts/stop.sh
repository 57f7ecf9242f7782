#!/usr/bin/env bash
# Stop the run launch.sh started: SIGTERM to the pid in ~/jaxalign-logs/train.pid on every worker.
#   tpu_scripts/stop.sh --project P --zone Z --name N [--dry-run]
# Only that pid is signalled; workers with no recorded run say so. With a gs:// --workdir that pid is
# launch.sh's keeper, which passes the SIGTERM on to jaxalign and records its exit status in the bucket.
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "$0")/common.sh"
parse_flags "$@"
require project zone name

pid="$LOG_DIR/train.pid"
remote="if [ -f \"$pid\" ]; then kill \"\$(cat \"$pid\")\" 2>/dev/null || true; rm -f \"$pid\";"
remote+=" echo \"\$(hostname): stopped\"; else echo \"\$(hostname): no run\"; fi"
ssh_all "stop the run on every worker" "$remote"
