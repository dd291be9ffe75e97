#!/bin/sh
# API process of the serving image: uvicorn with one worker per core (SEQREC_WORKERS overrides).
# exec: uvicorn becomes PID 1's child-free replacement and receives SIGTERM directly.
set -eu
workers="${SEQREC_WORKERS:-}"
if [ -z "$workers" ]; then
    workers="$(nproc)"
fi
exec uvicorn app.main:create_app --factory \
    --host "${HOST:-0.0.0.0}" --port "${PORT:-8000}" \
    --workers "$workers" \
    --timeout-graceful-shutdown "${SEQREC_GRACEFUL_S:-20}" \
    --no-access-log \
    --log-level "${SEQREC_LOG_LEVEL:-warning}"
