#!/usr/bin/env bash
# The GPU checks as one prepared script for a short GPU run (an H100/H200 for about 15 minutes),
# so nothing here is tuned on the GPU: every recipe is the CPU one.
#
#   sasrec    recipes/sasrec-ml-1m.toml with 2 blocks, to early stop (2-min cap): the time to validation
#             NDCG@10 0.18 (target: under 60 s of training), per-epoch time, wall time to the best epoch, test.
#   bert4rec  recipes/bert4rec-ml-1m.toml with its lr decay fitted to a 4.5-min budget (target: the
#             best epoch inside 5 minutes), per-epoch time, test.
#   gru4rec   recipes/gru4rec-ml-1m.toml (full softmax), 1.5-min cap: per-epoch time.
#   sasrec4   (not in the default set) recipes/sasrec-ml-1m.toml as it is (4 blocks), 3-min cap: the
#             quality recipe's GPU time to its best epoch; a second call, as the three above fill one.
#
# Usage, from the repository root (the prepared datasets travel as .seqrec_cache; the device
# machine cannot reach ../shared/data):
#   seqrec prepare ml-1m                       # here, once, if .seqrec_cache lacks it
#   on the GPU machine: bash benchmarks/gpu_checks.sh sasrec gru4rec bert4rec    (copy .seqrec_cache along)
# Results land in $OUT/results and logs in $OUT/logs (benchmarks/results and logs/ when OUT is unset).
# A dry run on a CPU checks the script itself: GPU_CHECKS_DRY_RUN=1 (300 users, 1 epoch each).
set -uo pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export SEQREC_CACHE_DIR=${SEQREC_CACHE_DIR:-$PWD/.seqrec_cache}
DEST=${OUT:-$PWD/benchmarks}/results
LOGS=${OUT:-$PWD}/logs
RUNS=$PWD/runs

DRY=${GPU_CHECKS_DRY_RUN:-0}
if [[ $DRY == 1 ]]; then
    scratch=$(mktemp -d)
    DEST=$scratch/results
    LOGS=$scratch/logs
    RUNS=$scratch/runs
    EXTRA=(--set train.max_users=300 --set train.epochs=1 --set train.device=cpu --set train.num_threads=1)
    TAG=dryrun
else
    EXTRA=(--set train.num_threads=none)  # the recipes' CPU thread counts do not apply
    TAG=gpu
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_checks: torch sees no CUDA device here (GPU_CHECKS_DRY_RUN=1 checks the script on a CPU)" >&2
        exit 2
    fi
    nvidia-smi -L || true
fi
mkdir -p "$DEST" "$LOGS" "$RUNS"
if ! compgen -G "$SEQREC_CACHE_DIR/ml-1m.v*.npz" >/dev/null; then
    echo "gpu_checks: no prepared ml-1m in $SEQREC_CACHE_DIR: run 'seqrec prepare ml-1m' and copy .seqrec_cache along" >&2
    exit 2
fi

run() {  # run NAME ARGS...: one train_quality run, its log kept, a failure reported and survived
    local name=$1
    shift
    echo "== $name: $(date -u +%T)"
    if "$PY" -m benchmarks.training.train_quality "$@" "${EXTRA[@]}" --results-dir "$DEST" \
        --out "$RUNS/$TAG-$name" >"$LOGS/$name.log" 2>&1; then
        tail -n 1 "$LOGS/$name.log"
    else
        echo "gpu_checks: $name failed; the end of its log:" >&2
        tail -n 20 "$LOGS/$name.log" >&2
        failed=1
    fi
}

failed=0
parts=${*:-sasrec bert4rec gru4rec}
for part in $parts; do
    case $part in
    sasrec)
        run sasrec-ml-1m --recipe recipes/sasrec-ml-1m.toml --set model.num_layers=2 --set train.max_minutes=2 \
            --target-ndcg 0.18 --tag "$TAG-recipe-exclude-seen-seed42"
        ;;
    sasrec4)
        run sasrec4-ml-1m --recipe recipes/sasrec-ml-1m.toml --set train.max_minutes=3 --target-ndcg 0.18 \
            --target-ndcg 0.2 --tag "$TAG-recipe-exclude-seen-4layers-seed42"
        ;;
    bert4rec)
        run bert4rec-ml-1m --recipe recipes/bert4rec-ml-1m.toml --set train.max_minutes=4.5 \
            --target-ndcg 0.165 --tag "$TAG-bucket-b32-exclude-seen-ema0.999-wsd0.2-4.5min"
        ;;
    gru4rec)
        run gru4rec-ml-1m --recipe recipes/gru4rec-ml-1m.toml --set train.max_minutes=1.5 --target-ndcg 0.16 \
            --tag "$TAG-fullce-1.5min"
        ;;
    *)
        echo "gpu_checks: unknown part '$part' (sasrec, bert4rec, gru4rec, sasrec4)" >&2
        failed=1
        ;;
    esac
done
echo "== results in $DEST"
ls "$DEST"
exit $failed
