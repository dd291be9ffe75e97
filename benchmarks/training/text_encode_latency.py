"""Latency of turning ONE new item's text into its UniSRec item vector, the way the service
does it (no torch): `tokenizers` -> text_encoder.onnx -> adaptor.onnx, onnxruntime on CPU.

  PYTHONPATH=. python -m benchmarks.training.text_encode_latency --bundle artifacts/unisrec-office \
      --threads 1 --out benchmarks/results/training/unisrec_text_encode_latency.json

Texts are real Office item texts (varying lengths), one item per call, after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import machine_info


def main() -> None:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    ap.add_argument("--texts", type=Path, default=Path("../shared/data/amazon-office/Office.text"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/training/unisrec_text_encode_latency.json"))
    args = ap.parse_args()

    man = json.loads((args.bundle / "manifest.json").read_text())["text"]
    tok = Tokenizer.from_file(str(args.bundle / man["tokenizer"]))
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    te = ort.InferenceSession(str(args.bundle / man["text_encoder"]["file"]), so, providers=["CPUExecutionProvider"])
    ada = ort.InferenceSession(str(args.bundle / man["adaptor"]["file"]), so, providers=["CPUExecutionProvider"])
    lines = args.texts.read_text().splitlines()[1:]
    texts = [ln.split("\t", 1)[1] for ln in lines if "\t" in ln]
    rng = np.random.default_rng(0)
    sample = [texts[i] for i in rng.integers(0, len(texts), size=args.n + 20)]

    def encode_one(text: str) -> np.ndarray:
        ids = np.array([tok.encode(text).ids], np.int64)
        emb = te.run([man["text_encoder"]["output"]], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
        return ada.run([man["adaptor"]["output"]], {man["adaptor"]["input"]: emb})[0]

    for t in sample[:20]:  # warm-up
        encode_one(t)
    ms, cpu, toks = [], [], []
    for t in sample[20:]:
        t0, c0 = time.perf_counter(), time.thread_time()
        encode_one(t)
        ms.append((time.perf_counter() - t0) * 1000)
        # CPU time of this thread (ORT with 1 intra-op thread runs in it): the cost of one
        # encoding without the waiting that a shared, overloaded CPU adds to wall time.
        cpu.append((time.thread_time() - c0) * 1000)
        toks.append(len(tok.encode(t).ids))
    ms_a = np.array(ms)
    out = {
        "what": "one new item: tokenize + text_encoder.onnx (all-MiniLM-L6-v2) + adaptor.onnx, onnxruntime CPU",
        "bundle": str(args.bundle),
        "items": args.n,
        "ort_threads": args.threads,
        "tokens_median": int(np.median(toks)),
        "tokens_max": int(np.max(toks)),
        "p50_ms": round(float(np.percentile(ms_a, 50)), 2),
        "p90_ms": round(float(np.percentile(ms_a, 90)), 2),
        "p99_ms": round(float(np.percentile(ms_a, 99)), 2),
        "mean_ms": round(float(ms_a.mean()), 2),
        "cpu_p50_ms": round(float(np.percentile(cpu, 50)), 2) if args.threads == 1 else None,
        "cpu_p90_ms": round(float(np.percentile(cpu, 90)), 2) if args.threads == 1 else None,
        "machine": f"{machine_info()['cpu']}, {os.cpu_count()} logical CPUs shared with other jobs "
        f"(load average {os.getloadavg()[0]:.1f} at start of write), {platform.system()} {platform.release()}",
        "onnxruntime": ort.__version__,
        "command": "PYTHONPATH=. python " + " ".join(sys.argv),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
