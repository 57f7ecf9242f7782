# shellcheck shell=bash disable=SC2034  # the settings below are read by the verb scripts
# Shared flag/env parsing and command running for the tpu_scripts/*.sh verbs.
# Sourced, never run. Every verb script does:
#   source common.sh; parse_flags "$@"; require project zone name; ...; run "step" gcloud ...

SCRIPT="tpu_scripts/$(basename "$0")"

# Settings: a flag wins over its env var, which wins over the default.
PROJECT="${TPU_PROJECT:-}"
ZONE="${TPU_ZONE:-}"
TYPE="${TPU_TYPE:-}"
NAME="${TPU_NAME:-}"
VERSION="${TPU_RUNTIME:-}"
DRY_RUN=0
QUEUED=0
SPOT=0
BEST_EFFORT=0
REPO=""            # setup: git URL to clone on every worker
REF="main"         # setup: branch, tag or commit of REPO
COPY=""            # setup: local checkout to copy to every worker instead of cloning
PIP_EXTRA="jax[tpu]"  # setup: installed after the repo, so jax finds the TPU (libtpu)
CONFIG=""          # launch: experiments/<name>.py, relative to the repo on the workers
WORKDIR=""         # launch: checkpoints and metrics on the workers (or gs://...); logs/watch: read if gs://
OUT=""             # logs: local folder for the gathered logs
WORKERS=""         # logs: number of workers (default: asked from gcloud describe)
WORKER="0"         # watch: which worker's log to tail
LINES="40"         # watch: how many log lines
FOLLOW=0           # watch: keep tailing (tail -F) until Ctrl-C
YES=0              # delete: no confirmation prompt (gcloud --quiet)
POLL="60"          # relaunch, watch --follow with a gs:// --workdir: seconds between looks
MAX_RESTARTS="10"  # relaunch: how many times a lost node is replaced before giving up
LOG_EVERY="${TPU_LOG_EVERY:-60}"  # launch with a gs:// --workdir: seconds between log uploads

# Fixed paths on every worker. $HOME is expanded there, not here.
# shellcheck disable=SC2016
REMOTE_DIR='$HOME/jaxalign'
# shellcheck disable=SC2016
LOG_DIR='$HOME/jaxalign-logs'

usage_error() {
  echo "$SCRIPT: $*" >&2
  echo "see tpu_scripts/README.md for the flags" >&2
  exit 2
}

# Every flag is accepted by every verb (so one alias works for all); each verb
# checks the ones it needs with `require`.
parse_flags() {
  while (($#)); do
    local flag="$1"
    case "$flag" in
      --dry-run) DRY_RUN=1; shift; continue ;;
      --queued) QUEUED=1; shift; continue ;;
      --spot) SPOT=1; shift; continue ;;
      --best-effort) BEST_EFFORT=1; shift; continue ;;
      --follow) FOLLOW=1; shift; continue ;;
      --yes) YES=1; shift; continue ;;
      -h | --help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;;
    esac
    local value
    if [[ "$flag" == --*=* ]]; then
      value="${flag#*=}"
      flag="${flag%%=*}"
      shift
    else
      (($# >= 2)) || usage_error "$flag needs a value"
      value="$2"
      shift 2
    fi
    case "$flag" in
      --project) PROJECT="$value" ;;
      --zone) ZONE="$value" ;;
      --type) TYPE="$value" ;;
      --name) NAME="$value" ;;
      --version) VERSION="$value" ;;
      --repo) REPO="$value" ;;
      --ref) REF="$value" ;;
      --copy) COPY="$value" ;;
      --pip) PIP_EXTRA="$value" ;;
      --config) CONFIG="$value" ;;
      --workdir) WORKDIR="$value" ;;
      --out) OUT="$value" ;;
      --workers) WORKERS="$value" ;;
      --worker) WORKER="$value" ;;
      --lines) LINES="$value" ;;
      --poll) POLL="$value" ;;
      --max-restarts) MAX_RESTARTS="$value" ;;
      *) usage_error "unknown flag $flag" ;;
    esac
  done
  if ((SPOT && BEST_EFFORT)); then
    usage_error "--spot and --best-effort exclude each other"
  fi
  [[ "$POLL" =~ ^[0-9]+([.][0-9]+)?$ ]] || usage_error "--poll must be a number of seconds, got '$POLL'"
  [[ "$MAX_RESTARTS" =~ ^[0-9]+$ ]] || usage_error "--max-restarts must be a number, got '$MAX_RESTARTS'"
  LOGS_URL="${WORKDIR%/}/logs"  # with a gs:// --workdir: every worker's log and exit status
}

# in_bucket: whether --workdir is a gs:// URL (then the logs and exit statuses are there too).
in_bucket() {
  [[ "$WORKDIR" == gs://* ]]
}

# require project zone ...: exit 2 naming the flag and env var of the first missing setting.
require() {
  local key var env
  for key in "$@"; do
    case "$key" in
      project) var=PROJECT env=TPU_PROJECT ;;
      zone) var=ZONE env=TPU_ZONE ;;
      type) var=TYPE env=TPU_TYPE ;;
      name) var=NAME env=TPU_NAME ;;
      version) var=VERSION env=TPU_RUNTIME ;;
      config) var=CONFIG env="" ;;
      workdir) var=WORKDIR env="" ;;
      *) echo "$SCRIPT: bug: require $key" >&2; exit 2 ;;
    esac
    if [[ -z "${!var}" ]]; then
      if [[ -n "$env" ]]; then
        usage_error "missing --$key (or set $env)"
      fi
      usage_error "missing --$key"
    fi
  done
}

# The flags every `gcloud compute tpus ...` call gets.
scope_flags() {
  SCOPE=("--zone=$ZONE" "--project=$PROJECT")
}

# run STEP CMD...: print the command; run it unless --dry-run; on failure say which step.
run() {
  local step="$1"
  shift
  show "$(quote "$@")"
  ((DRY_RUN)) && return 0
  local rc=0
  "$@" || rc=$?
  if ((rc)); then
    echo "$SCRIPT: step '$step' failed (exit $rc): $(quote "$@")" >&2
    exit "$rc"
  fi
}

# run_to FILE STEP CMD...: like run, with the command's stdout written to FILE.
run_to() {
  local file="$1" step="$2"
  shift 2
  show "$(quote "$@") > $(quote "$file")"
  ((DRY_RUN)) && return 0
  local rc=0
  "$@" >"$file" || rc=$?
  if ((rc)); then
    echo "$SCRIPT: step '$step' failed (exit $rc): $(quote "$@")" >&2
    exit "$rc"
  fi
}

# show LINE: the command about to run; on stdout for --dry-run (that is its output), else stderr.
show() {
  if ((DRY_RUN)); then
    echo "$1"
  else
    echo "+ $1" >&2
  fi
}

# quote ARGS...: one line that a shell reads back as the same words (single quotes where needed).
quote() {
  local out=() word q="'\\''"
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
      out+=("$word")
    else
      out+=("'${word//\'/$q}'")
    fi
  done
  printf '%s' "${out[*]}"
}

# ssh_all STEP COMMAND: run a shell command on every worker of the slice.
ssh_all() {
  scope_flags
  run "$1" gcloud compute tpus tpu-vm ssh "$NAME" "${SCOPE[@]}" --worker=all --command="$2"
}
