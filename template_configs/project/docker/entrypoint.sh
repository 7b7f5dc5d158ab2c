#!/usr/bin/env bash
# The container's entrypoint; it runs the same way from a project checkout.
#   1. DVC without git: the image holds no .git (DVC issue 3574), so DVC is told not to look.
#   2. On a multi-node AWS Batch job, Batch's node variables become MASTER_ADDR, MASTER_PORT and
#      NODE_RANK for Lightning (`python -m mlt_project.scripts.distributed` prints them).
#   3. With arguments, run them (`docker run IMAGE python -m mlt_project.training.evaluate`).
#      Without, run the pipeline: dvc pull, dvc repro, dvc push; pull and push only if a
#      default remote is set (DVC_S3_URI in the job's environment sets one).
#   4. SIGTERM (AWS Batch stopping the job, e.g. a Spot reclaim) or Ctrl+C: the signal goes to
#      every process of the pipeline, so training saves a resume checkpoint (not a DVC output:
#      the next `dvc repro` resumes from it); then the script exits with 75, which
#      aws/batch-job*.json retry. A command given as arguments gets the signal itself (exec).
set -euo pipefail
cd "$(dirname "$0")/.."

RETRY_EXIT_CODE=75
pipeline_group=""

# As PID 1 of a container, bash would neither pass a signal on nor act on it while a command
# runs. So each pipeline command runs in a session of its own (setsid), in the background, and
# the trap signals that whole session: DVC stops at once, and the training it started saves
# its checkpoint first, which the loop waits for.
on_stop() {
    trap '' TERM INT
    if [ -n "$pipeline_group" ]; then
        echo "entrypoint: stopping; training saves a resume checkpoint first" >&2
        kill -TERM -- "-$pipeline_group" 2>/dev/null || true
        while kill -0 -- "-$pipeline_group" 2>/dev/null; do sleep 0.2; done
    fi
    # A Batch retry starts in a fresh container: the checkpoint goes to S3 (CHECKPOINT_S3_URI),
    # and the retry pulls it back before its `dvc repro`.
    if syncs_checkpoint; then
        python -m mlt_project.scripts.checkpoint_sync push || true
    fi
    exit "$RETRY_EXIT_CODE"
}
trap on_stop TERM INT

# Resume checkpoints live in S3 for single-machine jobs that set CHECKPOINT_S3_URI.
syncs_checkpoint() {
    [ -n "${CHECKPOINT_S3_URI:-}" ] && [ -z "${AWS_BATCH_JOB_NUM_NODES:-}" ]
}

run() {
    setsid "$@" &
    pipeline_group=$!
    local status=0
    wait "$pipeline_group" || status=$?
    pipeline_group=""
    return "$status"
}

if [ ! -e .git ] && [ "$(dvc config core.no_scm)" != "true" ]; then
    dvc config --local core.no_scm true
fi

# On bad or partial variables the mapping prints one line and exits 1, and so does this script.
exports="$(python -m mlt_project.scripts.distributed)"
eval "$exports"

if [ "$#" -gt 0 ]; then
    exec "$@"
fi

if [ -n "${DVC_S3_URI:-}${DVC_S3_BUCKET_NAME:-}" ]; then
    run python -m mlt_project.scripts.dvc_remote  # the S3 remote, into .dvc/config.local
fi
if remote="$(dvc remote default 2>/dev/null)"; then
    echo "DVC remote '$remote': pulling inputs and earlier outputs"
    run dvc pull --allow-missing
else
    remote=""
fi

if [ -n "${AWS_BATCH_JOB_NUM_NODES:-}" ]; then
    run dvc repro preprocess
    if [ "$NODE_RANK" != "0" ]; then
        # A worker node: only global rank 0, on the main node, writes the checkpoint, so DVC
        # cannot run train here; the worker joins the training and leaves.
        exec python -m mlt_project.training.train
    fi
    # The main node: the workers train whether or not DVC finds train up to date, so it must
    # run here too.
    run dvc repro --force --single-item train
fi
if syncs_checkpoint; then
    run python -m mlt_project.scripts.checkpoint_sync pull
fi
run dvc repro
if syncs_checkpoint; then
    run python -m mlt_project.scripts.checkpoint_sync clear
fi

if [ -n "$remote" ]; then
    run dvc push
fi
