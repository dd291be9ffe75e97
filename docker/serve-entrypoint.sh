#!/bin/sh
# API process of the serving image: uvicorn with one worker per core (SEQREC_WORKERS overrides).
# exec: uvicorn replaces the shell (PID 1 in the container), so it gets SIGTERM directly.
set -eu
workers="${SEQREC_WORKERS:-}"
if [ -z "$workers" ]; then
    workers="$(nproc)"
fi
# Several workers: Prometheus metrics of all of them through one /metrics (multiprocess mode).
if [ "$workers" -gt 1 ] && [ -z "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
    PROMETHEUS_MULTIPROC_DIR="$(mktemp -d /tmp/seqrec-metrics.XXXXXX)"
    export PROMETHEUS_MULTIPROC_DIR
fi
exec uvicorn app.main:create_app --factory \
    --host "${HOST:-0.0.0.0}" --port "${PORT:-8000}" \
    --workers "$workers" \
    --timeout-graceful-shutdown "${SEQREC_GRACEFUL_S:-20}" \
    --no-access-log \
    --log-level "${SEQREC_LOG_LEVEL:-warning}"
