"""Training objectives over (hidden state, target) pairs against an item table.

All take h: (T, D) hidden states at the positions that have a target, pos: (T,) target
item indices, and the item table W: (N+1, D) (row 0 = padding, never a candidate).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

# Logit elements per chunk of the fused full-softmax loss: 1M floats (4 MB) stay near a CPU's
# L2 cache, so the (T, N) logits never make a round trip through memory, and peak memory no
# longer grows with T * N (it matters on Beauty's 54k items). benchmarks/training/ce_loss.py measures it.
CE_CHUNK_ELEMENTS = 1 << 20
# On a GPU the chunks are for memory only (each chunk costs kernel launches): 256M floats, so
# ML-1M's (T, N) logits are one chunk, and Beauty's at batch 128 a few.
CE_CHUNK_ELEMENTS_CUDA = 1 << 28


class _ChunkedSoftmaxCE(torch.autograd.Function):
    """mean_t [logsumexp_j z_tj - z_t,pos_t], z = h W^T + b over the catalogue rows 1..N, with the
    excluded entries at -inf; computed chunk by chunk, the backward pass recomputes each chunk's
    logits (one extra matmul) instead of keeping them: dz = softmax(z) - onehot(pos)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        h: torch.Tensor,  # (T, D)
        table: torch.Tensor,  # (N+1, D)
        bias: torch.Tensor | None,  # (N+1,)
        pos: torch.Tensor,  # (T,) in 1..N
        exclude: torch.Tensor | None,  # (R, N+1) bool
        rows: torch.Tensor | None,  # (T,) row of `exclude` for each t
    ) -> torch.Tensor:
        with torch.autocast(h.device.type, enabled=False):
            dt = _loss_dtype(h)
            hf, w, b = h.to(dt), table[1:].to(dt), None if bias is None else bias[1:].to(dt)
            drop = None if exclude is None else _exclusions(exclude, rows)
            lse = torch.empty(len(h), device=h.device, dtype=dt)
            total = torch.zeros((), device=h.device, dtype=dt)
            for s, z, tgt in _logit_chunks(hf, w, b, pos, drop):
                lse_c = torch.logsumexp(z, dim=1)  # (C,)
                lse[s : s + len(z)] = lse_c
                total += (lse_c - z.gather(1, tgt[:, None]).squeeze(1)).sum()
        ctx.save_for_backward(h, table, bias, pos, lse)
        ctx.drop = drop
        return total / max(len(h), 1)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor):  # type: ignore[override]
        h, table, bias, pos, lse = ctx.saved_tensors
        drop = ctx.drop
        with torch.autocast(h.device.type, enabled=False):
            dt = _loss_dtype(h)
            hf, w = h.to(dt), table[1:].to(dt)
            b = None if bias is None else bias[1:].to(dt)
            scale = grad.to(dt) / max(len(h), 1)
            gh = torch.empty_like(hf)
            gw = torch.zeros_like(w)  # (N, D)
            gb = None if bias is None else torch.zeros(w.shape[0], device=h.device, dtype=dt)
            for s, z, tgt in _logit_chunks(hf, w, b, pos, drop):
                e = s + len(z)
                dz = z.sub_(lse[s:e, None]).exp_()  # (C, N): softmax, in place; excluded: exp(-inf) = 0
                dz[torch.arange(len(z), device=z.device), tgt] -= 1.0
                dz *= scale
                gh[s:e] = dz @ w
                gw += dz.T @ hf[s:e]
                if gb is not None:
                    gb += dz.sum(0)
        g_table = torch.cat([torch.zeros_like(gw[:1]), gw]).to(table.dtype)
        g_bias = None if gb is None else torch.cat([gb.new_zeros(1), gb]).to(bias.dtype)
        return gh.to(h.dtype), g_table, g_bias, None, None, None


def _loss_dtype(h: torch.Tensor) -> torch.dtype:
    """fp32 for bf16/fp16/fp32 inputs (softmax sums need it), fp64 stays fp64."""
    return torch.promote_types(h.dtype, torch.float32)


# What a chunk must set to -inf: a dense (T, N+1) mask, or, when positions share a
# per-sequence mask, (first position, end position, excluded columns) for each run of
# consecutive positions of one sequence.
Exclusions = torch.Tensor | list[tuple[int, int, torch.Tensor]]


def _exclusions(exclude: torch.Tensor, rows: torch.Tensor | None) -> Exclusions:
    """Per-sequence masks become column lists per run of positions: a user's items are a few %
    of the catalogue, so filling those columns is far cheaper than a dense (T, N) mask."""
    if rows is None:
        return exclude
    if len(rows) == 0:
        return []
    seen_row, seen_col = exclude[:, 1:].nonzero(as_tuple=True)  # column j = item j + 1
    cols = torch.split(seen_col, torch.bincount(seen_row, minlength=len(exclude)).tolist())
    starts = [0, *(torch.nonzero(rows[1:] != rows[:-1]).flatten() + 1).tolist()]
    ends = [*starts[1:], len(rows)]
    return [(a, b, cols[r]) for a, b, r in zip(starts, ends, rows[starts].tolist(), strict=True)]


def _logit_chunks(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, pos: torch.Tensor, drop: Exclusions | None):
    """Yield (start, z (C, N) fp32 logits with the excluded entries at -inf, target column (C,))."""
    n = w.shape[0]
    budget = CE_CHUNK_ELEMENTS_CUDA if h.device.type == "cuda" else CE_CHUNK_ELEMENTS
    step = max(1, budget // max(n, 1))
    runs = iter(drop) if isinstance(drop, list) else None
    run = next(runs, None) if runs is not None else None
    for s in range(0, len(h), step):
        e = min(s + step, len(h))
        z = h[s:e] @ w.T  # (C, N)
        if b is not None:
            z += b
        tgt = pos[s:e] - 1  # (C,) column of the positive
        if drop is not None:
            keep = z.gather(1, tgt[:, None])  # (C, 1): the positive stays in its own softmax
            if runs is None:
                z.masked_fill_(drop[s:e, 1 : n + 1], float("-inf"))  # type: ignore[index]
            while run is not None and run[0] < e:
                z[max(run[0], s) - s : min(run[1], e) - s].index_fill_(1, run[2], float("-inf"))
                if run[1] > e:
                    break  # the run continues into the next chunk
                run = next(runs, None)  # type: ignore[arg-type]
            z.scatter_(1, tgt[:, None], keep)
        yield s, z, tgt


def full_softmax_ce(
    h: torch.Tensor,
    pos: torch.Tensor,
    table: torch.Tensor,
    bias: torch.Tensor | None = None,
    exclude: torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy over the whole catalogue: -log softmax(h W^T + b)[pos], averaged over T.

    Extra rows past the catalogue (e.g. a [mask] token) must be sliced off by the caller;
    the padding row 0 is dropped here, so it is never a candidate.
    exclude: (R, N+1) bool, items that are not negatives (e.g. the user's own items: evaluation
    never ranks them, and a later one is a positive elsewhere in the sequence); the positive
    itself always stays in the softmax. rows: (T,) which row of `exclude` applies to each
    position (None: one row per position, R = T), so a per-sequence mask is never expanded
    to (T, N+1). The logits are built chunk by chunk and never held whole (see
    _ChunkedSoftmaxCE); softmax and loss are fp32 even under autocast.
    """
    return _ChunkedSoftmaxCE.apply(h, table, bias, pos, exclude, rows)


def bce_negatives(h: torch.Tensor, pos: torch.Tensor, table: torch.Tensor, num_negatives: int = 1) -> torch.Tensor:
    """SASRec's original loss: -log s(r_pos) - sum_j log(1 - s(r_neg_j)), negatives uniform per position."""
    T = h.shape[0]
    num_items = table.shape[0] - 1
    neg = torch.randint(1, num_items + 1, (T, num_negatives), device=h.device)  # (T, K)
    # A sampled negative equal to the positive is resampled once; the rest are vanishingly rare.
    clash = neg == pos[:, None]
    neg = torch.where(clash, torch.randint_like(neg, 1, num_items + 1), neg)
    pos_logit = (h * table[pos]).sum(-1)  # (T,)
    neg_logit = torch.einsum("td,tkd->tk", h, table[neg])  # (T, K)
    return (
        F.binary_cross_entropy_with_logits(pos_logit.float(), torch.ones_like(pos_logit, dtype=torch.float))
        + F.binary_cross_entropy_with_logits(neg_logit.float(), torch.zeros_like(neg_logit, dtype=torch.float))
        * num_negatives
    )


def sampled_softmax(
    h: torch.Tensor,
    pos: torch.Tensor,
    table: torch.Tensor,
    num_negatives: int,
    popularity: torch.Tensor | None = None,
    logq: str = "negatives",
    bias: torch.Tensor | None = None,
    in_batch: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax over the positive and `num_negatives` negatives shared by the batch.

    Negatives are uniform, or drawn in proportion to `popularity` (any non-negative weights,
    e.g. supp^alpha) with a logQ correction for that draw (Yi et al. 2019).
    logq="negatives": subtract log q from the negatives' logits only (q = draw probability);
    logq="sampled": subtract log(K q) from the positive's and every negative's logit, the
    sampled-softmax estimate of the full softmax (Jean et al. 2015). The two differ by a
    log q_pos shift of the positive, which favours rare targets in the "negatives" form.
    A negative that equals the positive is masked out. bias: (N+1,) added to each item's logit
    (BERT4Rec's b^O), so a caller never concatenates it onto the whole table for a few rows.

    in_batch: (N+1,) how often each item is a training target. The batch's own targets, each
    once, join the drawn negatives (in-batch negatives: the popular items, for the price of their
    logits), and every candidate's q becomes its expected share of the candidates:
    r_j = (K q_j + P(j among the batch's T targets)) / (K + U), P = 1 - (1 - p_j)^T with p the
    targets' frequency, U the distinct targets; uniform draws then get the correction too.
    """
    if logq not in ("negatives", "sampled"):
        raise ValueError(f"logq must be negatives or sampled, got {logq!r}")
    num_items = table.shape[0] - 1
    # The weights live where the task was built (CPU); drawn and indexed beside the logits.
    popularity = None if popularity is None else popularity.to(h.device)
    in_batch = None if in_batch is None else in_batch.to(h.device)
    if popularity is None:
        neg = torch.randint(1, num_items + 1, (num_negatives,), device=h.device)
    else:
        neg = torch.multinomial(popularity, num_negatives, replacement=True)
    shift = None  # (K,): what each negative's logit gets added (-log q, the bias), inside the GEMM
    log_q_pos = None  # (T,): the positive's log q, for logq="sampled"
    if in_batch is not None:
        neg = torch.cat([neg, pos.unique()])
        log_r = _candidate_log_share(in_batch, popularity, num_negatives, len(pos), len(neg), num_items)
        shift, log_q_pos = -log_r(neg), log_r(pos)
    elif popularity is not None:
        log_total = popularity.sum().log()  # log q_i = log pop_i - log_total
        shift, log_q_pos = log_total - popularity[neg].log(), popularity[pos].log() - log_total
    # One gather for the positives and the negatives: each gather's backward writes a gradient the
    # size of the whole table, which at a million items costs more than the loss itself.
    rows = table[torch.cat([pos, neg])]  # (T + K, D)
    pos_logit = (h * rows[: len(pos)]).sum(-1, keepdim=True)  # (T, 1)
    if bias is not None:
        pos_logit = pos_logit + bias[pos, None]
    if logq == "sampled" and log_q_pos is not None:
        # Same constant log K on both sides keeps the softmax unchanged except for q_pos.
        pos_logit = pos_logit - log_q_pos[:, None].to(pos_logit.dtype)
    if bias is not None:
        shift = bias[neg] if shift is None else shift + bias[neg]
    neg_rows = rows[len(pos) :]  # (K, D)
    neg_logit = h @ neg_rows.T if shift is None else torch.addmm(shift.to(h.dtype), h, neg_rows.T)  # (T, K)
    dt = _loss_dtype(h)  # fp32 under autocast, fp64 stays fp64
    pos_logit, neg_logit = pos_logit.squeeze(1).to(dt), neg_logit.to(dt)  # (T,), (T, K)
    rows, cols = _collisions(neg, pos)
    with torch.no_grad():
        # In place and untracked: no op before saves these logits, and logsumexp's backward
        # already gives a floored entry weight exp(min - lse) = 0 (the finite floor keeps a row
        # whose every negative is its positive free of NaNs).
        neg_logit[rows, cols] = torch.finfo(neg_logit.dtype).min
    # -log softmax([pos, negs])[0], without building the (T, 1 + K) concatenation: the cat, its
    # backward and a log_softmax over it were ~1/5 of a BERT4Rec Beauty step on a CPU.
    return (torch.logaddexp(pos_logit, torch.logsumexp(neg_logit, dim=1)) - pos_logit).mean()


def _candidate_log_share(
    counts: torch.Tensor, popularity: torch.Tensor | None, k: int, t: int, m: int, num_items: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """ids -> log r_ids: each item's expected share of m candidates, k drawn ~ popularity (uniform
    when None) plus the distinct targets of t positions, each a target with frequency counts / sum."""
    counts = counts.double()
    total = counts.sum()
    pop_total = None if popularity is None else popularity.double().sum()

    def log_r(ids: torch.Tensor) -> torch.Tensor:
        q = 1.0 / num_items if popularity is None else popularity[ids].double() / pop_total
        in_batch = -torch.expm1(t * torch.log1p(-counts[ids] / total))  # 1 - (1 - p)^t, exact for small p
        return torch.log((k * q + in_batch) / m)

    return log_r


def _collisions(neg: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) of every shared negative neg[column] that equals pos[row], found by binary
    search in the sorted negatives instead of a dense (T, K) comparison."""
    order = neg.argsort()
    ordered, pos = neg[order], pos.contiguous()
    lo = torch.searchsorted(ordered, pos)  # (T,)
    count = torch.searchsorted(ordered, pos, right=True) - lo  # (T,): copies of pos[t] in neg
    rows = torch.repeat_interleave(torch.arange(len(pos), device=pos.device), count)  # (H,)
    first = torch.repeat_interleave(torch.cumsum(count, 0) - count, count)  # (H,) each row's first hit
    return rows, order[lo[rows] + torch.arange(len(rows), device=pos.device) - first]
