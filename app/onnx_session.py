"""The one way the service opens an ONNX graph (model.onnx and the text bundle's extra graphs)."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort


def ort_session(path: Path) -> ort.InferenceSession:
    # One thread per worker: parallelism comes from processes, not from oversubscribed pools.
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
