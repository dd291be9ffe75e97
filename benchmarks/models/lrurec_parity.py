"""LRURec's step graph against its whole-history graph, on real ML-1M histories.

Exports a trained LRURec checkpoint as a bundle (training/export.py), then for each of the first
N users' test histories (leave-one-out: every event but the held-out last one; the newest max_len
of them) runs step.onnx one event at a time from a zero state, as the service advances a user's
state, and compares it with model.onnx on the whole history: user vectors, the scores of every
item in the catalogue, and the top-10 ids. Also times a one-event step against one whole-history
pass (batch 1, one thread).

    python -m benchmarks.models.lrurec_parity --checkpoint runs/<run>/best.pt [--users 1000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnxruntime as ort


from benchmarks.common import write_result
from training.data import leave_one_out, prepare
from training.export import export_bundle


def _session(path: Path) -> ort.InferenceSession:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True, help="a trained LRURec best.pt")
    ap.add_argument("--dataset", default="ml-1m", help="named dataset whose histories are replayed")
    ap.add_argument("--users", type=int, default=1000, help="how many users (the first N of the dataset)")
    ap.add_argument("--name", default="lrurec_parity", help="result file name under benchmarks/results/")
    args = ap.parse_args()

    data = prepare(args.dataset)
    split = leave_one_out(data)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = export_bundle(args.checkpoint, Path(tmp), name="parity")
        manifest = json.loads((bundle / "manifest.json").read_text())
        if manifest["model"] != "lrurec":
            raise SystemExit(f"{args.checkpoint} is a {manifest['model']} checkpoint, not lrurec")
        spec = manifest["incremental"]
        layers, hid = spec["state_shape"]
        max_len = manifest["max_len"]
        full, step = _session(bundle / "model.onnx"), _session(bundle / spec["file"])
        items = np.load(bundle / "item_vectors.npy")  # (N, D)

        vec_diff = score_diff = 0.0
        same_top10 = events = 0
        step_s: list[float] = []
        full_s: list[float] = []
        hists = split.test_hist[: args.users]
        for hist in hists:
            h = np.asarray(hist[-max_len:], dtype=np.int64)
            t0 = time.perf_counter()
            want = full.run(["user_vec"], {"item_seq": h[None]})[0]  # (1, D)
            full_s.append(time.perf_counter() - t0)
            state = np.zeros((layers, 1, hid), np.float32)
            for item in h:  # one event at a time, from a zero state
                t0 = time.perf_counter()
                state, got = step.run(spec["outputs"], {"state": state, "item_seq": np.array([[item]])})
                step_s.append(time.perf_counter() - t0)
            events += len(h)
            s_want, s_got = want @ items.T, got @ items.T  # (1, N) scores of every item
            vec_diff = max(vec_diff, float(np.abs(got - want).max()))
            score_diff = max(score_diff, float(np.abs(s_got - s_want).max()))
            top_want = np.argsort(-s_want[0], kind="stable")[:10]
            same_top10 += int(np.array_equal(np.argsort(-s_got[0], kind="stable")[:10], top_want))

    payload = {
        "checkpoint": str(args.checkpoint),
        "dataset": data.stats(),
        "model_config": manifest["model_config"],
        "valid_of_checkpoint": manifest["metrics"].get("valid"),
        "users": len(hists),
        "events_stepped": events,
        "state_shape": [layers, hid],
        "max_abs_diff_user_vec": vec_diff,
        "max_abs_diff_scores": score_diff,
        "top10_identical_users": same_top10,
        "top10_identical_fraction": same_top10 / len(hists),
        "step_one_event_ms_median": round(1000 * statistics.median(step_s), 4),
        "model_onnx_whole_history_ms_median": round(1000 * statistics.median(full_s), 4),
        "export_parity_max_abs_diff": {**manifest["parity_max_abs_diff"], "step": spec["parity_max_abs_diff"]},
    }
    path = write_result(args.name, payload)
    print(json.dumps({k: payload[k] for k in list(payload)[4:]}, indent=1))
    print(path)


if __name__ == "__main__":
    main()
