#!/bin/sh
# API process of the serving image: one uvicorn worker per core, each on its own listening socket of
# the port (app/runtime/server.py; SEQREC_REUSE_PORT=false: one shared socket). Workers, drain time
# and log level are settings (SEQREC_WORKERS, SEQREC_GRACEFUL_S, SEQREC_LOG_LEVEL: docs/settings.md),
# and several workers share one /metrics (Prometheus multiprocess mode, set up by the server).
# exec: the supervisor replaces the shell (PID 1 in the container), so it gets SIGTERM directly and
# passes it to the workers, which drain their requests.
set -eu
exec python -m app.runtime.server --host "${HOST:-0.0.0.0}" --port "${PORT:-8000}"
