#!/usr/bin/env bash
# Put the repo on every worker of a TPU VM / pod slice and `pip install -e .` it (with jax[tpu]).
#   tpu_scripts/setup.sh --project P --zone Z --name N --repo GIT_URL [--ref main] [--dry-run]
#   tpu_scripts/setup.sh --project P --zone Z --name N --copy . [--dry-run]
# --repo clones into ~/jaxalign (or fetches, if there) and checks out --ref (branch, tag or commit).
# --copy tars the local checkout (without .git, .venv, workdirs, caches), copies it to every worker and
# unpacks it over ~/jaxalign. --pip "PKGS" changes what is installed next to the repo (default jax[tpu];
# "" for nothing).
set -euo pipefail
# shellcheck source=tpu_scripts/common.sh
source "$(dirname "$0")/common.sh"
parse_flags "$@"
require project zone name
scope_flags
if [[ -n "$REPO" && -n "$COPY" ]] || [[ -z "$REPO" && -z "$COPY" ]]; then
  usage_error "give exactly one of --repo GIT_URL or --copy LOCAL_CHECKOUT"
fi

if [[ -n "$REPO" ]]; then
  fetch="if [ ! -d \"$REMOTE_DIR/.git\" ]; then git clone --quiet $(quote "$REPO") \"$REMOTE_DIR\"; fi"
  fetch+=" && git -C \"$REMOTE_DIR\" fetch --quiet origin $(quote "$REF")"
  fetch+=" && git -C \"$REMOTE_DIR\" checkout --quiet --detach FETCH_HEAD"
  ssh_all "fetch $REPO@$REF on every worker" "set -e; $fetch"
else
  [[ -f "$COPY/setup.py" ]] || usage_error "--copy $COPY: no setup.py there (give the repo root)"
  tarball="$(mktemp -t jaxalign-src.XXXXXX)"
  trap 'rm -f "$tarball"' EXIT
  run "pack $COPY" tar -czf "$tarball" -C "$COPY" --exclude=.git --exclude=.venv --exclude=workdirs \
    --exclude=__pycache__ --exclude='*.egg-info' .
  run "copy the checkout to every worker" gcloud compute tpus tpu-vm scp "$tarball" "$NAME:jaxalign-src.tar.gz" \
    "${SCOPE[@]}" --worker=all
  ssh_all "unpack the checkout on every worker" \
    "set -e; mkdir -p \"$REMOTE_DIR\"; tar -xzf \"\$HOME/jaxalign-src.tar.gz\" -C \"$REMOTE_DIR\"; rm \"\$HOME/jaxalign-src.tar.gz\""
fi

# shellcheck disable=SC2086  # PIP_EXTRA is a list of requirement specs, one word each
ssh_all "pip install on every worker" \
  "set -e; cd \"$REMOTE_DIR\"; python3 -m pip install --quiet -e . $(quote $PIP_EXTRA)"
