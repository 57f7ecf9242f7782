#!/usr/bin/env bash
# Keep a queued-resource (spot / best-effort) run going until it ends; runs on your machine meanwhile.
#   tpu_scripts/relaunch.sh --project P --zone Z --name N --type T --version V --queued [--spot | --best-effort]
#       --config experiments/x.py --workdir gs://b/run (--repo URL [--ref REF] | --copy DIR)
#       [--poll 60] [--max-restarts 10] [--dry-run]
# Each round: create.sh, wait until the queued resource is ACTIVE, setup.sh, launch.sh, then look every
# --poll seconds at the exit files launch.sh leaves in <workdir>/logs and at the queued resource's state:
# - an exit file says 0: the run finished; exit 0 (the node is left for delete.sh --queued);
# - the state is SUSPENDED, FAILED or PREEMPTED, or the queued resource is gone: the node is lost; delete
#   it and go round again on the same --workdir, which resumes the run from its last checkpoint; at most
#   --max-restarts times, then exit 1;
# - an exit file says another status (and the node is not lost): the run failed; exit 1, no relaunch;
# - "<status> SIGTERM" (a preemption's notice, or stop.sh) is neither: keep looking at the state.
# Every flag is passed on to the other verbs as given.
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "$0")/common.sh"
parse_flags "$@"
require project zone name type version config workdir
((QUEUED)) || usage_error "needs --queued: the queued resource's state is how a preemption shows"
in_bucket || usage_error "--workdir must be a gs:// path: the run has to outlive its node"
[[ -n "$REPO$COPY" ]] || usage_error "give --repo GIT_URL or --copy LOCAL_CHECKOUT (for setup.sh)"
scope_flags
here="$(dirname "$0")"
ARGS=("$@")  # create/setup/launch/delete.sh get the same flags
describe=(gcloud compute tpus queued-resources describe "$NAME" "${SCOPE[@]}" "--format=value(state.state)")
exits=(gcloud storage cat "$LOGS_URL/exit-*")
errors="$(mktemp -t relaunch.XXXXXX)"
trap 'rm -f "$errors"' EXIT

say() {
  if ((DRY_RUN)); then echo "# $*"; else echo "[$(date -u +%H:%M:%S)] $*"; fi
}

# state: the queued resource's state; GONE when gcloud says there is none, UNKNOWN on another error.
state() {
  "${describe[@]}" 2>"$errors" && return 0
  if grep -qiE 'not.?found' "$errors"; then echo GONE; else echo UNKNOWN; fi
}

lost() {
  [[ "$1" =~ ^(SUSPENDED|FAILED|PREEMPTED|GONE)$ ]]
}

# look: what the exit files say, in OUTCOME: failed (a status not from a SIGTERM), finished (a 0),
# stopped (only statuses after a SIGTERM) or running (none yet); their lines in EXITS.
look() {
  EXITS="$("${exits[@]}" 2>/dev/null)" || EXITS=""
  if grep -qvE '^(0|[0-9]+ SIGTERM)?$' <<<"$EXITS"; then
    OUTCOME=failed
  elif grep -qx 0 <<<"$EXITS"; then
    OUTCOME=finished
  elif [[ -n "$EXITS" ]]; then
    OUTCOME=stopped
  else
    OUTCOME=running
  fi
}

# again STATE WHEN: the node is lost: delete it (if there is one left) and start the next round.
restarts=0
again() {
  local why="queued resource $NAME is $1 $2"
  if ((restarts >= MAX_RESTARTS)); then
    echo "$SCRIPT: $why; giving up after $restarts restart(s) (--max-restarts $MAX_RESTARTS)." \
      "The run resumes from $WORKDIR when launched again; delete.sh --queued removes what is left." >&2
    exit 1
  fi
  restarts=$((restarts + 1))
  say "$why: delete it and start again on $WORKDIR (restart $restarts of $MAX_RESTARTS)"
  if [[ "$1" != GONE ]]; then
    "$here/delete.sh" "${ARGS[@]}" --queued --yes || exit
  fi
}

# round: one node's life. Returns when the node is lost (after `again`); exits when the run has ended.
round() {
  local st="" new seen=""
  say "create the queued resource $NAME"
  "$here/create.sh" "${ARGS[@]}"
  say "wait until $NAME is ACTIVE (a look every ${POLL}s)"
  if ((DRY_RUN)); then
    show "$(quote "${describe[@]}")"
  else
    until [[ "$st" == ACTIVE ]] || lost "$st"; do
      [[ -z "$st" ]] || sleep "$POLL"
      new="$(state)"
      [[ "$new" == "$st" ]] || say "state of $NAME: $new"
      st="$new"
    done
    if lost "$st"; then again "$st" "before the run started"; return; fi
  fi

  say "remove the exit files of earlier rounds, then setup and launch"
  show "$(quote gcloud storage rm "$LOGS_URL/exit-*")"
  ((DRY_RUN)) || gcloud storage rm "$LOGS_URL/exit-*" >/dev/null 2>&1 || true  # none: fine
  if ! "$here/setup.sh" "${ARGS[@]}" || ! "$here/launch.sh" "${ARGS[@]}"; then
    st="$(state)"
    if lost "$st"; then again "$st" "(lost during setup or launch)"; return; fi
    echo "$SCRIPT: setup or launch failed while $NAME is $st (see above)" >&2
    exit 1
  fi

  say "watch the exit files in $LOGS_URL and the state of $NAME (a look every ${POLL}s)"
  if ((DRY_RUN)); then
    show "$(quote "${exits[@]}")"
    show "$(quote "${describe[@]}")"
    say "dry run: a lost node would be deleted (delete.sh --queued --yes) and the round run again"
    exit 0
  fi
  while :; do
    sleep "$POLL"
    look
    if [[ "$OUTCOME" == finished ]]; then
      say "the run finished (an exit file in $LOGS_URL says 0); delete.sh --queued removes $NAME"
      exit 0
    fi
    new="$(state)"
    [[ "$new" == "$st" ]] || say "state of $NAME: $new"
    st="$new"
    if lost "$st"; then again "$st" "(preempted)"; return; fi
    if [[ "$OUTCOME" == failed ]]; then
      echo "$SCRIPT: the run failed: the exit files in $LOGS_URL say $(paste -sd, <<<"$EXITS");" \
        "tpu_scripts/logs.sh --workdir $WORKDIR gathers the logs" >&2
      exit 1
    fi
    if [[ "$OUTCOME" == stopped && -z "$seen" ]]; then
      say "a SIGTERM stopped the run (a preemption, or stop.sh): waiting for the state of $NAME"
      seen=1
    fi
  done
}

while :; do
  say "round $((restarts + 1))"
  round
done
