"""A/A false positives of the experiment statistics (app/serving/abtest.py) on real per-user outcomes.

    python -m benchmarks.live.ab_false_positives --outcomes WORKDIR/aa_outcomes.csv [--reps 2000]

The input is what an A/A replay through the service produced (benchmarks/live/online_replay.py writes
it, and runs this at its end): one row per replayed event, in time order, with its user and how
the list served just before it fared (hit@10, NDCG@10, reciprocal rank). Both arms served the
same bundle under two names, so an event's outcome does not depend on its user's arm: splitting
the users again with the service's own assignment (Experiment.assign) and another salt gives
exactly what the service would have recorded under that salt. Each repetition (a new salt) asks:

1. fixed horizon, at the end: does the 95% interval of the difference, clustered by user (delta
   method), exclude 0?                                            nominal rate: 5%
2. the same with events treated as independent (what per-event intervals claim):  above 5% when
   a few users make many of the events;
3. the sequential test (mixture SPRT) read at `--looks` evenly spaced points of the replay, as a
   dashboard polling GET /stats/online would: does its verdict ever leave "no difference yet"?
   bounded by alpha (5%), usually well below: the price of reading it at every look.

Results: benchmarks/results/ab_false_positives[-DATASET].json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
from app.serving.abtest import UNDECIDED, Z95, Arm, compare  # noqa: E402
from app.serving.experiment import Experiment  # noqa: E402
from benchmarks.machine import machine_info  # noqa: E402

METRICS = {"hit_rate": "hits", "ndcg": "ndcg", "mrr": "rr"}


def read_outcomes(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """users (one per event, in time order) and the per-event hits, ndcg and rr."""
    lines = path.read_text().splitlines()
    head = lines[0].split(",")
    rows = [ln.split(",") for ln in lines[1:] if ln]
    col = {name: i for i, name in enumerate(head)}
    users = [r[col["user_id"]] for r in rows]
    values = {m: np.array([float(r[col[m]]) for r in rows]) for m in ("hits", "ndcg", "rr")}
    return users, values


def wilson(k: int, n: int) -> list[float]:
    p, z = k / n, Z95
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(centre - half, 4), round(centre + half, 4)]


def per_user_prefixes(users: list[str], values: dict[str, np.ndarray], looks: int) -> dict[str, Any]:
    """Per look (the first c events of the replay) and user: scored events and metric sums."""
    ids = sorted(set(users))
    index = {u: i for i, u in enumerate(ids)}
    who = np.array([index[u] for u in users])
    n_events, n_users = len(users), len(ids)
    cuts = [round(n_events * (j + 1) / looks) for j in range(looks)]
    n = np.stack([np.bincount(who[:c], minlength=n_users) for c in cuts]).astype(float)
    out: dict[str, Any] = {"ids": ids, "n": n, "cuts": cuts}
    for name, v in values.items():
        out[name] = np.stack([np.bincount(who[:c], weights=v[:c], minlength=n_users) for c in cuts])
        out[f"{name}_sq"] = np.stack([np.bincount(who[:c], weights=v[:c] ** 2, minlength=n_users) for c in cuts])
    return out


def arm_sums(p: dict[str, Any], mask: np.ndarray, look: int) -> Arm:
    """The ledger's SUMS for the users in `mask` at one look."""
    n = p["n"][look][mask]
    users = float((n > 0).sum())
    s = {"users": users, "users_served": users, "served": n.sum(), "scored": n.sum(), "scored2": (n * n).sum()}
    for name in ("hits", "ndcg", "rr"):
        m = p[name][look][mask]
        s[name], s[f"{name}2"], s[f"{name}_scored"] = m.sum(), (m * m).sum(), (m * n).sum()
    return Arm(s)


def event_level_excludes_zero(p: dict[str, Any], masks: tuple[np.ndarray, np.ndarray], name: str) -> bool:
    """A normal interval of the difference of per-event means, events taken as independent."""
    stats = []
    for mask in masks:
        n = p["n"][-1][mask].sum()
        mean = p[name][-1][mask].sum() / n
        var = (p[f"{name}_sq"][-1][mask].sum() / n - mean * mean) * n / (n - 1)
        stats.append((mean, var / n))
    diff, var = stats[1][0] - stats[0][0], stats[0][1] + stats[1][1]
    return abs(diff) > Z95 * math.sqrt(var)


def simulate(
    users: list[str],
    values: dict[str, np.ndarray],
    reps: int = 2000,
    looks: int = 40,
    alpha: float = 0.05,
    effect: float = 0.1,
    min_users: int = 20,
    test_metric: str = "hit_rate",
) -> dict[str, Any]:
    p = per_user_prefixes(users, values, looks)
    fixed = dict.fromkeys(METRICS, 0)
    naive = dict.fromkeys(METRICS, 0)
    sequential = 0
    first_look: list[int] = []
    diffs = []
    for r in range(reps):
        exp = Experiment.parse("control=a:50,treatment=b:50", salt=f"aa-{r}")
        treat = np.array([exp.assign(u).name == "treatment" for u in p["ids"]])
        masks = (~treat, treat)
        for metric, name in METRICS.items():
            d = compare(arm_sums(p, masks[0], -1), arm_sums(p, masks[1], -1), metric, alpha, effect, min_users)
            if d.ci95 is not None and (d.ci95[0] > 0 or d.ci95[1] < 0):
                fixed[metric] += 1
            naive[metric] += int(event_level_excludes_zero(p, masks, name))
            if metric == test_metric:
                diffs.append(d.difference)
        for look in range(looks):
            d = compare(arm_sums(p, masks[0], look), arm_sums(p, masks[1], look), test_metric, alpha, effect, min_users)
            if d.verdict != UNDECIDED:
                sequential += 1
                first_look.append(look + 1)
                break
    per_user = p["n"][-1]
    return {
        "events": len(users),
        "users": len(p["ids"]),
        "events_per_user": {
            "median": float(np.median(per_user)),
            "max": float(per_user.max()),
            "share_of_top_10_users": round(float(np.sort(per_user)[-10:].sum() / per_user.sum()), 4),
        },
        "reps": reps,
        "looks": looks,
        "alpha": alpha,
        "effect": effect,
        "min_users": min_users,
        "test_metric": test_metric,
        "fixed_horizon_user_clustered": {
            m: {"false_positive_rate": k / reps, "ci95": wilson(k, reps)} for m, k in fixed.items()
        },
        "fixed_horizon_events_independent": {
            m: {"false_positive_rate": k / reps, "ci95": wilson(k, reps)} for m, k in naive.items()
        },
        "sequential_any_look": {
            "false_positive_rate": sequential / reps,
            "ci95": wilson(sequential, reps),
            "median_look_of_false_verdicts": float(np.median(first_look)) if first_look else None,
        },
        "difference_sd_over_splits": float(np.std(diffs)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--outcomes", type=Path, required=True, help="CSV: user_id,hits,ndcg,rr per event, in time order.")
    ap.add_argument("--reps", type=int, default=2000, help="A/A splits (salts).")
    ap.add_argument("--looks", type=int, default=40, help="Evenly spaced reads of the sequential test.")
    ap.add_argument("--min-users", type=int, default=20, help="As SEQREC_ONLINE_TEST_MIN_USERS.")
    ap.add_argument("--effect", type=float, default=0.1, help="As SEQREC_ONLINE_TEST_EFFECT.")
    ap.add_argument("--label", default="ml-100k", help="Dataset name, for the result file's name.")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    users, values = read_outcomes(args.outcomes)
    t = time.perf_counter()
    result = simulate(users, values, args.reps, args.looks, min_users=args.min_users, effect=args.effect)
    result = {
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": machine_info(),
        "dataset": args.label,
        **result,
        "seconds": round(time.perf_counter() - t, 1),
    }
    suffix = "" if args.label == "ml-100k" else f"-{args.label}"
    out = args.out or ROOT / "benchmarks" / "results" / f"ab_false_positives{suffix}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
