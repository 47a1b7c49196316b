#!/bin/sh
# The compose `trainer` service: train once, then leave the checkpoint to the `api` service.
#
# - A checkpoint in $XIAOPHI_MODEL (config.json present): nothing to do, exit 0 at once.
# - Else, with XIAOPHI_TRAIN_ARGS empty: what `make demo` does (xiaophi-demo --no-serve):
#   the tiny pipeline on the demo corpora baked into the image, then the `demo` knowledge base
#   from the packaged documents. Finished stages are skipped, so a rerun after an interruption
#   resumes.
# - Else: `xiaophi-train pipeline --out <run> $XIAOPHI_TRAIN_ARGS` (your recipe / data, e.g.
#   XIAOPHI_TRAIN_ARGS="--recipe /data/my-recipe.yaml"); the run folder is $XIAOPHI_RUN_DIR,
#   by default the parent of $XIAOPHI_MODEL.
set -eu

model="${XIAOPHI_MODEL:-/models/tiny/dpo}"
run="${XIAOPHI_RUN_DIR:-$(dirname "$model")}"
kb_dir="${XIAOPHI_KB_DIR:-/kb}"

if [ -f "$model/config.json" ]; then
    echo "trainer: a checkpoint is already in $model; nothing to train."
    exit 0
fi

started=$(date +%s)
if [ -z "${XIAOPHI_TRAIN_ARGS:-}" ]; then
    echo "trainer: no checkpoint in $model; training the tiny demo model into $run"
    xiaophi-demo --no-serve --run "$run" --data /app/data/demo --kb-dir "$kb_dir"
else
    echo "trainer: no checkpoint in $model; xiaophi-train pipeline --out $run $XIAOPHI_TRAIN_ARGS"
    # Word splitting of XIAOPHI_TRAIN_ARGS is intended: it holds several flags.
    # shellcheck disable=SC2086
    xiaophi-train pipeline --out "$run" $XIAOPHI_TRAIN_ARGS
fi

if [ ! -f "$model/config.json" ]; then
    echo "trainer: the run finished but $model holds no checkpoint;" \
        "XIAOPHI_MODEL should name the run's dpo folder (<run>/dpo)." >&2
    exit 1
fi
echo "trainer: done in $(( $(date +%s) - started )) s; the api serves $model"
