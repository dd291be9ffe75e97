#!/bin/sh
# The training job (compose profile `train`; scripts/local_topology.py runs this same file).
#
# Offline (no REDIS_URL):  prepare DATASET -> train -> export -> publish.
# Live loop (REDIS_URL):   snapshot the event store -> warm-start train on OFFLINE_FILE (if set)
#                          + the snapshot, from the bundle now served -> export -> publish.
# Publishing swaps a symlink in one atomic rename. PUBLISH=replace (default) swaps the served
# one ($BUNDLE_ROOT/$MODEL); every API process polls that path (SEQREC_BUNDLE_POLL_S) and loads
# the new bundle without a restart. PUBLISH=treatment swaps $BUNDLE_ROOT/$MODEL-treatment
# instead and, when RELOAD_URLS is set, asks each API (POST /admin/reload) to serve both as an
# experiment: control = the bundle served now, treatment = the new one (TREATMENT_SHARE percent).
#
# Environment: MODEL (sasrec), DATASET (ml-1m), TRAIN_ARGS (extra `seqrec train` options),
# BUNDLE_ROOT (/bundles), RUN_DIR (where checkpoints go), KEEP (releases kept, 3), SEQREC (the CLI),
# REDIS_URL + KEY_PREFIX (seqrec:) for the live loop, OFFLINE_FILE (interactions file combined
# with the snapshot), INIT (auto = the served bundle when there is one; none; or a path),
# PUBLISH (replace | treatment), TREATMENT_SHARE (50), RELOAD_URLS (space-separated API base
# URLs), SEQREC_API_KEY (for the reload), PYTHON (python3), EXPORT_ARGS (extra `seqrec export`
# options; default --no-program: the service reads ONNX, not the torch.export program, whose
# capture is most of a small model's export time; set it empty to keep model.pt2).
set -eu
MODEL="${MODEL:-sasrec}"
DATASET="${DATASET:-ml-1m}"
BUNDLE_ROOT="${BUNDLE_ROOT:-/bundles}"
RUN_DIR="${RUN_DIR:-/tmp/seqrec-runs}"
KEEP="${KEEP:-3}"
SEQREC="${SEQREC:-seqrec}"
PYTHON="${PYTHON:-python3}"
REDIS_URL="${REDIS_URL:-}"
KEY_PREFIX="${KEY_PREFIX:-seqrec:}"
OFFLINE_FILE="${OFFLINE_FILE:-}"
INIT="${INIT:-auto}"
PUBLISH="${PUBLISH:-replace}"
TREATMENT_SHARE="${TREATMENT_SHARE:-50}"
RELOAD_URLS="${RELOAD_URLS:-}"
EXPORT_ARGS="${EXPORT_ARGS---no-program}"

stamp="$(date -u +%Y%m%d-%H%M%S)"
name="${MODEL}-${DATASET}-${stamp}"
mkdir -p "$BUNDLE_ROOT/releases" "$RUN_DIR/$name"

# The bundle served now, resolved once: the symlink may be swapped while this job trains.
served=""
if [ -e "$BUNDLE_ROOT/$MODEL/manifest.json" ]; then
    served="$(readlink -f "$BUNDLE_ROOT/$MODEL")"
fi
init_args=""
case "$INIT" in
    auto) if [ -n "$served" ]; then init_args="--init $served"; fi ;;
    none) ;;
    *) init_args="--init $INIT" ;;
esac

if [ -n "$REDIS_URL" ]; then
    events="$RUN_DIR/$name/events.parquet"
    echo "[train-job] snapshot of the event store -> $events"
    $SEQREC snapshot --redis-url "$REDIS_URL" --prefix "$KEY_PREFIX" --out "$events" --no-progress
    if [ -n "$OFFLINE_FILE" ]; then
        data_args="--file $OFFLINE_FILE --file $events"
    else
        data_args="--file $events"
    fi
else
    echo "[train-job] prepare $DATASET"
    $SEQREC prepare "$DATASET"
    data_args="--dataset $DATASET"
fi

echo "[train-job] train $MODEL ${init_args:-(from scratch)} -> $RUN_DIR/$name"
# data_args, init_args and TRAIN_ARGS are split into words on purpose (several options).
# shellcheck disable=SC2086
$SEQREC train --model "$MODEL" $data_args $init_args --out "$RUN_DIR/$name" ${TRAIN_ARGS:-}
echo "[train-job] export -> $BUNDLE_ROOT/releases/$name"
# export writes a temporary sibling directory and renames it: a release directory is always whole.
# shellcheck disable=SC2086
$SEQREC export "$RUN_DIR/$name/best.pt" --out "$BUNDLE_ROOT/releases" --name "$name" $EXPORT_ARGS

# Publish atomically: a new symlink under a temporary name, renamed over the published one.
target="$MODEL"
if [ "$PUBLISH" = "treatment" ]; then
    if [ -z "$served" ]; then
        echo "[train-job] PUBLISH=treatment needs a served $BUNDLE_ROOT/$MODEL to compare against" >&2
        exit 2
    fi
    target="$MODEL-treatment"
fi
ln -sfn "releases/$name" "$BUNDLE_ROOT/.$target.next"
mv -Tf "$BUNDLE_ROOT/.$target.next" "$BUNDLE_ROOT/$target"
echo "[train-job] published $BUNDLE_ROOT/$target -> releases/$name"

if [ "$PUBLISH" = "treatment" ] && [ -n "$RELOAD_URLS" ]; then
    control="$(basename "$served")"
    experiment="control=$control:$((100 - TREATMENT_SHARE)),treatment=$name:$TREATMENT_SHARE"
    for url in $RELOAD_URLS; do
        echo "[train-job] $url: serve $experiment"
        $PYTHON - "$url" "$BUNDLE_ROOT/$MODEL" "$BUNDLE_ROOT/$target" "$experiment" <<'EOF'
import json, os, sys, urllib.request
url, control, treatment, experiment = sys.argv[1:]
body = json.dumps({"bundles": [control, treatment], "experiment": experiment}).encode()
req = urllib.request.Request(url.rstrip("/") + "/admin/reload", data=body, method="POST",
                             headers={"Content-Type": "application/json", "X-API-Key": os.environ.get("SEQREC_API_KEY", "")})
with urllib.request.urlopen(req, timeout=120) as r:
    print(r.status, json.loads(r.read())["experiment"])
EOF
    done
fi

# Keep the newest $KEEP releases of this model/dataset, and never one a symlink still points to.
# shellcheck disable=SC2012
ls -1d "$BUNDLE_ROOT/releases/${MODEL}-${DATASET}-"* 2>/dev/null | sort -r | tail -n +"$((KEEP + 1))" | while read -r old; do
    in_use=""
    for link in "$BUNDLE_ROOT/$MODEL" "$BUNDLE_ROOT/$MODEL-treatment"; do
        if [ -e "$link" ] && [ "$(readlink -f "$link")" = "$(readlink -f "$old")" ]; then in_use=1; fi
    done
    if [ -z "$in_use" ]; then rm -rf "$old"; fi
done
rm -rf "${RUN_DIR:?}/$name"
