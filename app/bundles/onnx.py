"""The one way the service opens an ONNX graph (model.onnx and the text bundle's extra graphs)."""

from __future__ import annotations

import threading
from pathlib import Path

import onnxruntime as ort


def ort_session(path: Path, threads: int = 1) -> ort.InferenceSession:
    # One thread per worker by default: parallelism comes from processes, not from oversubscribed pools.
    # More threads only for the few large calls that ask (explanations, SEQREC_EXPLAIN_THREADS).
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads > 1:
        # Idle pool threads sleep instead of spinning: between explanation calls the other core
        # belongs to the other worker's requests.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class ThreadedSessions:
    """One graph's sessions by intra-op thread count: `base` (1 thread) serves, the others open on first use."""

    def __init__(self, path: Path, base: ort.InferenceSession) -> None:
        self.path = path
        self._by_threads: dict[int, ort.InferenceSession] = {1: base}
        self._lock = threading.Lock()

    def get(self, threads: int) -> ort.InferenceSession:
        threads = max(1, threads)
        sess = self._by_threads.get(threads)
        if sess is None:
            with self._lock:  # two concurrent first calls open it once
                sess = self._by_threads.get(threads)
                if sess is None:
                    sess = ort_session(self.path, threads)
                    self._by_threads[threads] = sess
        return sess
