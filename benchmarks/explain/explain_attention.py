"""Attention weights as explanations, measured against the service's leave-one-out ablation.

    flock /tmp/seqrec-core0.lock taskset -c 0 python -m benchmarks.explain.explain_attention \
        --run runs/sasrec-ml1m:artifacts/sasrec-ml1m --run runs/bert4rec-ml1m:artifacts/bert4rec-ml1m \
        --out benchmarks/results/explain/explain_attention.json

For each model (a training run's best.pt and the bundle exported from it), random ML-1M users
(their newest `--history` events, as the service reads them) and their top-k recommendations:

- ablation: contribution(e, i) = score(i | h) - score(i | h without e) for the newest N events,
  what GET /recommend?explain=true reports (app/serving/explain.py, through the bundle);
- attention: the last block's attention weights, averaged over heads, from the query that makes
  the user vector (SASRec: the newest position; BERT4Rec: the appended [mask]) to each of the
  newest N events. One weight per event, the same for every recommended item.

Per (user, item) pair: top-1 agreement (the same most important event), Spearman's rank
correlation of the two over the N events, and for each method the faithfulness rate of the
issue's test: removing its top event lowers the item's score more than removing a random other
event of the N (the score drops are the ablation's, i.e. the model's own scores).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
from app.bundles.loader import load_bundle  # noqa: E402
from app.serving.explain import contributions  # noqa: E402
from benchmarks.explain.explain_latency import ml1m_histories  # noqa: E402
from benchmarks.machine import machine_info  # noqa: E402
from training.checkpoint import load_checkpoint  # noqa: E402


def last_block_attention(model: torch.nn.Module, hist: np.ndarray) -> np.ndarray:
    """(len(window),) weights of the user-vector query over the history positions (oldest first).

    The last block's input is captured with a hook on a normal forward, so the weights are the
    ones that forward computes: softmax(q K^T / sqrt(d_h)) of its newest query row, heads averaged.
    """
    block = model.blocks[-1]
    seen: dict[str, torch.Tensor] = {}
    handle = block.register_forward_pre_hook(lambda _m, args, kwargs=None: seen.update(x=args[0], mask=args[1]))
    try:
        with torch.no_grad():
            model(torch.as_tensor(hist[None].astype(np.int64)))
    finally:
        handle.remove()
    x, mask = seen["x"], seen["mask"]  # (1, L', D), (1, 1, L', L'); L' may hold an appended [mask]
    attn = block.attn
    D, H = x.shape[-1], attn.num_heads
    q_src = x[:, -1:]
    q_src = block.ln1(q_src) if block.norm_first else q_src
    w_q, w_kv = attn.qkv.weight.split([D, 2 * D])
    b_q, b_kv = attn.qkv.bias.split([D, 2 * D])
    with torch.no_grad():
        q = torch.nn.functional.linear(q_src, w_q, b_q).view(1, 1, H, D // H).transpose(1, 2)  # (1, H, 1, D/H)
        k = torch.nn.functional.linear(x, w_kv[:D], b_kv[:D]).view(1, -1, H, D // H).transpose(1, 2)  # (1, H, L', D/H)
        att = (q @ k.transpose(-2, -1)) * (D // H) ** -0.5  # (1, H, 1, L')
        att = att.masked_fill(~mask[:, :, -1:], float("-inf")).softmax(-1).mean(1)[0, 0]  # (L',)
    return att.numpy()


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(np.float64)
    rb = np.argsort(np.argsort(b, kind="stable"), kind="stable").astype(np.float64)
    ra -= ra.mean()
    rb -= rb.mean()
    den = np.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / den) if den > 0 else 0.0


def measure(run: Path, bundle_path: Path, data_dir: Path, users: int, history: int, n: int, k: int) -> dict:
    model, ckpt = load_checkpoint(run / "best.pt", "cpu")
    model.eval()
    bundle = load_bundle(bundle_path)
    rng = np.random.default_rng(0)
    hists = [h for h in ml1m_histories(data_dir, bundle).values() if len(h) >= n]  # N events to rank
    pick = rng.choice(len(hists), size=min(users, len(hists)), replace=False)
    agree, rho, faithful = [], [], {"ablation": [], "attention": []}
    for u in pick:
        h = hists[u][-history:]
        labels, _ = bundle.index.search(bundle.user_vectors([h]), k, [h])
        contrib = contributions(bundle, h, labels[0], n)  # (N, k), row = age
        window = h[-model.max_len :]
        att = last_block_attention(model, window)
        if hasattr(model, "append_mask"):  # BERT4Rec: drop the [mask] query's weight on itself
            att = att[:-1]
        # Age 0 = newest; BERT4Rec reads max_len - 1 events, so an older one it cannot see gets 0.
        by_age = np.pad(att[::-1][:n], (0, max(0, n - len(att))))
        top_att = int(np.argmax(by_age))
        for c in range(contrib.shape[1]):
            col = contrib[:, c]
            top_abl = int(np.argmax(col))
            agree.append(top_att == top_abl)
            rho.append(spearman(by_age, col))
            for name, top in (("ablation", top_abl), ("attention", top_att)):
                other = int(rng.choice([a for a in range(n) if a != top]))
                faithful[name].append(col[top] > col[other])
    return {
        "model": ckpt["model"],
        "bundle": bundle.name,
        "test_ndcg@10": (json.loads((run / "final.json").read_text()).get("test", {}) or {}).get("ndcg@10")
        if (run / "final.json").is_file()
        else None,
        "users": len(pick),
        "pairs": len(agree),
        "top1_agreement": round(float(np.mean(agree)), 4),
        "spearman_mean": round(float(np.mean(rho)), 4),
        "spearman_median": round(float(np.median(rho)), 4),
        "faithfulness_ablation": round(float(np.mean(faithful["ablation"])), 4),
        "faithfulness_attention": round(float(np.mean(faithful["attention"])), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", action="append", required=True, help="RUN_DIR:BUNDLE_DIR (repeatable)")
    ap.add_argument("--data-dir", type=Path, default=ROOT / "../shared/data")
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--history", type=int, default=200)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    rows = []
    for spec in args.run:
        run, bundle = spec.split(":", 1)
        row = measure(Path(run), Path(bundle), args.data_dir, args.users, args.history, args.n, args.k)
        print(json.dumps(row), flush=True)
        rows.append(row)
    result = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "command": " ".join(["python", *sys.argv]),
        "explain_n": args.n,
        "history_events": args.history,
        "k": args.k,
        "machine": machine_info(),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
