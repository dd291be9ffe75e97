"""Incremental attention for SASRec: the newest position over cached keys/values vs the full encode.

    python -m benchmarks.models.incremental_attention --out benchmarks/results/models/incremental_attention.json

A causal SASRec's outputs at old positions do not change when an item is appended, so a per-user
cache of each block's keys and values (and nothing else) lets the next user vector be computed for
the new position alone: per block one Q/K/V projection of one row, attention of one query over
L keys, one FFN row. Measured here, single-threaded, batch 1, on an SASRec of the ML-1M recipe's
size (dim 64, 2 blocks, 1 head, max_len 200, absolute positions: the only scheme under which the
cached keys stay valid; the default recency positions renumber every item on each append):
the full encode in eager torch and in ONNX Runtime (model.onnx as exported) against the cached
step in eager torch, and the cached step's difference to the full encode (it must be exact).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
from benchmarks.machine import machine_info  # noqa: E402
from models.sasrec import SASRec, SASRecConfig  # noqa: E402


def build_cache(model: SASRec, seq: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(1, L) real items (no padding) -> per block (K, V), each (1, H, L, D/H)."""
    cache = []
    L = seq.shape[1]
    x = model.item_emb(seq) * model.scale + model.pos_emb(torch.arange(L))[None]  # (1, L, D)
    for block in model.blocks:
        a = block.attn
        D = x.shape[-1]
        w_kv, b_kv = a.qkv.weight[D:], a.qkv.bias[D:]
        k, v = F.linear(x, w_kv, b_kv).view(1, L, 2, a.num_heads, D // a.num_heads).permute(2, 0, 3, 1, 4)
        cache.append((k, v))
        mask = torch.ones(1, 1, L, L, dtype=torch.bool).tril()
        x = block(x, mask)
    return cache


def step(model: SASRec, cache: list[tuple[torch.Tensor, torch.Tensor]], item: int, pos: int) -> torch.Tensor:
    """The user vector after appending `item` at position `pos`, from the cached K/V (cache grows)."""
    x = model.item_emb.weight[item][None, None] * model.scale + model.pos_emb.weight[pos][None, None]  # (1, 1, D)
    for i, block in enumerate(model.blocks):
        a = block.attn
        D, H = x.shape[-1], a.num_heads
        k_c, v_c = cache[i]
        q_n, k_n, v_n = F.linear(x, a.qkv.weight, a.qkv.bias).view(1, 1, 3, H, D // H).permute(2, 0, 3, 1, 4)
        k, v = torch.cat([k_c, k_n], dim=2), torch.cat([v_c, v_n], dim=2)  # (1, H, L+1, D/H)
        cache[i] = (k, v)
        q_in = block.ln1(x)  # norm_first: the query is the normalised input, keys/values the raw one
        q = F.linear(q_in, a.qkv.weight[:D], a.qkv.bias[:D]).view(1, 1, H, D // H).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(1, 1, D)
        y = q_in + a.out(y)
        h = block.ln2(y)
        x = h + block.ffn(h)
        del q_n
    return model.final_ln(x)[:, -1]  # (1, D)


def cpu_us(fn, n: int) -> float:
    fn()
    t = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--length", type=int, default=200)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/models/incremental_attention.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    L = args.length
    model = SASRec(SASRecConfig(num_items=3416, max_len=L, dim=64, num_layers=2, num_heads=1, positions="absolute"))
    model.eval()
    seq = torch.randint(1, 3417, (1, L))
    with torch.no_grad():
        full = model(seq)
        cache = build_cache(model, seq[:, :-1])
        inc = step(model, cache, int(seq[0, -1]), L - 1)
        diff = float((full - inc).abs().max())
        base = build_cache(model, seq[:, :-1])

        def incremental() -> None:
            step(model, list(base), int(seq[0, -1]), L - 1)  # a fresh copy of the list: the cache stays L-1

        t_full = cpu_us(lambda: model(seq), args.n)
        t_inc = cpu_us(incremental, args.n)
        import onnxruntime as ort

        from training.export import export_onnx

        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "model.onnx"
            export_onnx(model, path, seq)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = opts.inter_op_num_threads = 1
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            arr = seq.numpy()
            t_ort = cpu_us(lambda: sess.run(None, {"item_seq": arr}), args.n)
    cache_bytes = sum(k.numel() * 4 + v.numel() * 4 for k, v in base)
    out = {
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": machine_info(),
        "model": "SASRec dim 64, 2 blocks, 1 head, absolute positions, batch 1, 1 thread",
        "length": L,
        "cpu_us_full_encode_torch": round(t_full, 1),
        "cpu_us_full_encode_onnxruntime": round(t_ort, 1),
        "cpu_us_cached_kv_step_torch": round(t_inc, 1),
        "cached_over_full_onnxruntime": round(t_inc / t_ort, 3),
        "max_abs_diff_cached_vs_full": diff,
        "cache_bytes_per_user": cache_bytes,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
