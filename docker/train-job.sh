#!/bin/sh
# The training job (compose profile `train`; scripts/local_topology.sh runs this same file):
# prepare -> train -> export a bundle into the bundle volume, then publish it by swapping the
# symlink the API serves ($BUNDLE_ROOT/$MODEL) in one atomic rename. Every API process polls
# that path (SEQREC_BUNDLE_POLL_S) and loads the new bundle without a restart.
#
# Environment: MODEL (sasrec), DATASET (ml-1m), TRAIN_ARGS (extra `seqrec train` options),
# BUNDLE_ROOT (/bundles), RUN_DIR (where checkpoints go), KEEP (releases kept, 3), SEQREC (the CLI).
set -eu
MODEL="${MODEL:-sasrec}"
DATASET="${DATASET:-ml-1m}"
BUNDLE_ROOT="${BUNDLE_ROOT:-/bundles}"
RUN_DIR="${RUN_DIR:-/tmp/seqrec-runs}"
KEEP="${KEEP:-3}"
SEQREC="${SEQREC:-seqrec}"

stamp="$(date -u +%Y%m%d-%H%M%S)"
name="${MODEL}-${DATASET}-${stamp}"
mkdir -p "$BUNDLE_ROOT/releases" "$RUN_DIR"

echo "[train-job] prepare $DATASET"
$SEQREC prepare "$DATASET"
echo "[train-job] train $MODEL -> $RUN_DIR/$name"
# TRAIN_ARGS is split into words on purpose (several options).
# shellcheck disable=SC2086
$SEQREC train --model "$MODEL" --dataset "$DATASET" --out "$RUN_DIR/$name" ${TRAIN_ARGS:-}
echo "[train-job] export -> $BUNDLE_ROOT/releases/$name"
# export writes a temporary sibling directory and renames it: a release directory is always whole.
$SEQREC export "$RUN_DIR/$name/best.pt" --out "$BUNDLE_ROOT/releases" --name "$name"

# Publish atomically: a new symlink under a temporary name, renamed over the served one.
ln -sfn "releases/$name" "$BUNDLE_ROOT/.$MODEL.next"
mv -Tf "$BUNDLE_ROOT/.$MODEL.next" "$BUNDLE_ROOT/$MODEL"
echo "[train-job] published $BUNDLE_ROOT/$MODEL -> releases/$name"

# Keep the newest $KEEP releases of this model/dataset (the one just published is the newest).
# shellcheck disable=SC2012
ls -1d "$BUNDLE_ROOT/releases/${MODEL}-${DATASET}-"* 2>/dev/null | sort -r | tail -n +"$((KEEP + 1))" | while read -r old; do
    rm -rf "$old"
done
rm -rf "${RUN_DIR:?}/$name"
