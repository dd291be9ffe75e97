#!/bin/sh
# API process of the serving image: one uvicorn worker per core (SEQREC_WORKERS overrides), each on
# its own listening socket of the port (app/runtime/server.py; SEQREC_REUSE_PORT=false: one shared socket).
# exec: the supervisor replaces the shell (PID 1 in the container), so it gets SIGTERM directly and
# passes it to the workers, which drain their requests.
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
exec python -m app.runtime.server \
    --host "${HOST:-0.0.0.0}" --port "${PORT:-8000}" \
    --workers "$workers" \
    --graceful-s "${SEQREC_GRACEFUL_S:-20}" \
    --log-level "${SEQREC_LOG_LEVEL:-warning}"
