"""HSTU's incremental encoder: appending events to a per-user cache of keys and values vs a full
re-encode, in ONNX Runtime, batch 1, one thread.

    taskset -c 1 python -m benchmarks.models.hstu_incremental [--checkpoint runs/<run>/best.pt]

HSTU is causal, so the keys and values of past positions (every layer) do not change when events
are appended (models/hstu.py). Measured in one run:

Ratios come from interleaved timings (full, 1-event step, 5-event step in turn, blocks of 10
calls), so a shared core loads them alike.

- full: model.onnx as the service runs it, on a 200-event history (the ML-1M max_len);
- step: step.onnx (training/export.py: export_hstu_step) with 199 cached events + 1 new event,
  and with 195 cached + 5 new (one call for several events that arrived between two reads);
- a whole user's life, 1 to 200 events, one event at a time: the sum of the steps vs the sum of
  the full encodes at every length (what a service pays if it re-encodes after each event);
- the same two paths in eager torch, for reference;
- the cache per user (bytes, float32 and float16), the cost of turning it into bytes and back
  (what a store round trip adds besides the network), and a float16 cache: step16.onnx takes and
  returns it as float16 (a cast inside the graph), its cost and its user-vector error; numpy's own
  float16 conversion, for comparison.

Without --checkpoint the model is the reference's ML-1M setting (d 50, 2 layers, 1 head, max_len
200) at random initialisation with the time bias on (time_buckets 128, the heavier case), over a
3,416-item catalogue: timings do not depend on the weights; the float16 error does, so pass a
trained checkpoint for that number.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
from benchmarks.common import write_result  # noqa: E402
from models.hstu import HSTU, HSTUConfig  # noqa: E402
from training.checkpoint import load_checkpoint  # noqa: E402
from training.export import HSTU_STEP_OUTPUTS, export_hstu_step, export_onnx, random_times  # noqa: E402


def per_call_us(fn: Callable[[], object], n: int, repeats: int) -> tuple[float, float]:
    """(CPU, wall) microseconds per call: the medians over `repeats` of n calls (one warm-up call).
    CPU time is the process's (one thread): unlike wall time, it does not grow when another job
    shares the core; ratios are taken on it."""
    fn()
    cpu, wall = [], []
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        for _ in range(n):
            fn()
        cpu.append((time.process_time() - c) / n * 1e6)
        wall.append((time.perf_counter() - w) / n * 1e6)
    return statistics.median(cpu), statistics.median(wall)


def paired_cpu_us(fns: list[Callable[[], object]], n: int, repeats: int) -> list[float]:
    """CPU microseconds per call of each of `fns`, their calls interleaved in blocks of 10 so
    that every one of them sees the same load on a shared core (the ratios are taken on these);
    the median over `repeats` rounds of n calls each."""
    for fn in fns:
        fn()
    rounds: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        spent = [0.0] * len(fns)
        for _ in range(max(1, n // 10)):
            for i, fn in enumerate(fns):
                c = time.process_time()
                for _ in range(10):
                    fn()
                spent[i] += time.process_time() - c
        for i in range(len(fns)):
            rounds[i].append(spent[i] / (max(1, n // 10) * 10) * 1e6)
    return [statistics.median(r) for r in rounds]


def session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=None, help="a trained HSTU best.pt (default: random init)")
    ap.add_argument("--time-buckets", type=int, default=128, help="without --checkpoint: 0 = no time bias")
    ap.add_argument("--length", type=int, default=200, help="history length (at most the model's max_len)")
    ap.add_argument("--n", type=int, default=300, help="calls per timing")
    ap.add_argument("--repeats", type=int, default=5, help="timings per measurement (the median is kept)")
    ap.add_argument("--name", default="hstu_incremental", help="result file name under benchmarks/results/")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.checkpoint is not None:
        model, _ = load_checkpoint(args.checkpoint)
        assert isinstance(model, HSTU), f"{args.checkpoint} is not an HSTU checkpoint"
        source = str(args.checkpoint)
    else:
        cfg = HSTUConfig(num_items=3416, max_len=200, dim=50, num_layers=2, num_heads=1, time_buckets=args.time_buckets)
        model, source = HSTU(cfg), "random init"
    model.eval()
    L = length = args.length
    if length > model.max_len:
        ap.error(f"--length {L} > the model's max_len {model.max_len}: the window would slide (rebuild)")
    rng = np.random.default_rng(0)
    items = rng.integers(1, model.num_items + 1, size=(1, L)).astype(np.int64)
    times = random_times([L], seed=1)[0][None]  # (1, L) non-decreasing unix seconds
    timed = model.uses_times

    with tempfile.TemporaryDirectory() as d:
        full_path, step_path, half_path = Path(d) / "model.onnx", Path(d) / "step.onnx", Path(d) / "step16.onnx"
        example = (
            (torch.as_tensor(items[:, :4]), torch.as_tensor(times[:, :4])) if timed else torch.as_tensor(items[:, :4])
        )
        export_onnx(model, full_path, example)
        spec = export_hstu_step(model, step_path)
        spec16 = export_hstu_step(model, half_path, cache_dtype="float16")
        full, step, step16 = session(full_path), session(step_path), session(half_path)
        step_bytes, full_bytes = step_path.stat().st_size, full_path.stat().st_size

    def full_feed(end: int) -> dict[str, np.ndarray]:
        feed = {"item_seq": items[:, :end]}
        if timed:
            feed["time_seq"] = times[:, :end]
        return feed

    def encode_by_steps(upto: int, graph=None, dtype: type = np.float32) -> dict[str, np.ndarray]:
        """The step graph's feed holding the cache of the first `upto` events (built one event at a time)."""
        graph = graph or step
        layers, wk, wv = spec["cache_shape"]
        feed = {"cache_k": np.zeros((layers, 1, 0, wk), dtype), "cache_v": np.zeros((layers, 1, 0, wv), dtype)}
        feed["cache_times"] = np.zeros((1, 0), np.int64)
        for end in range(1, upto + 1):
            feed["item_seq"], feed["time_seq"] = items[:, end - 1 : end], times[:, end - 1 : end]
            k, v, _ = graph.run(HSTU_STEP_OUTPUTS, {n: feed[n] for n in spec["inputs"]})
            feed |= {"cache_k": k, "cache_v": v, "cache_times": times[:, :end]}
        return feed

    def step_feed(cache: dict[str, np.ndarray], start: int, m: int) -> dict[str, np.ndarray]:
        feed = {**cache, "item_seq": items[:, start : start + m], "time_seq": times[:, start : start + m]}
        return {n: feed[n] for n in spec["inputs"]}

    # --- parity: the step path ends where the full encode does ------------------------------------
    cache_all = encode_by_steps(L)
    want = full.run(["user_vec"], full_feed(L))[0]
    cache_1 = encode_by_steps(L - 1)
    got = step.run(HSTU_STEP_OUTPUTS, step_feed(cache_1, L - 1, 1))[2]
    parity = float(np.abs(got - want).max())
    with torch.no_grad():
        cache_t, _ = model.extend(
            model.empty_cache(),
            torch.as_tensor(items[:, : L - 1]),
            torch.as_tensor(times[:, : L - 1]) if timed else None,
        )
        new_t = torch.as_tensor(times[:, L - 1 :]) if timed else None
        _, vec_t = model.extend(cache_t, torch.as_tensor(items[:, L - 1 :]), new_t)
        full_args = (torch.as_tensor(items), torch.as_tensor(times)) if timed else (torch.as_tensor(items),)
        parity_torch = float((vec_t - model(*full_args)).abs().max())

    # --- float16 cache (step16.onnx: the cache enters and leaves as float16): error and size -------
    cache16_1 = encode_by_steps(L - 1, step16, np.float16)
    fp16_err = float(np.abs(step16.run(HSTU_STEP_OUTPUTS, step_feed(cache16_1, L - 1, 1))[2] - want).max())
    k_all, v_all = cache_all["cache_k"], cache_all["cache_v"]
    time_bytes = L * 8 if timed else 0
    bytes32 = k_all.nbytes + v_all.nbytes + time_bytes
    bytes16 = (k_all.nbytes + v_all.nbytes) // 2 + time_bytes
    k16, v16 = k_all.astype(np.float16), v_all.astype(np.float16)

    def round_trip(k: np.ndarray, v: np.ndarray) -> None:  # cache -> bytes (a store value) -> arrays for the step
        blob = k.tobytes() + v.tobytes()
        a = np.frombuffer(blob, dtype=k.dtype)
        a[: k.size].reshape(k.shape), a[k.size :].reshape(v.shape)

    def numpy_half() -> None:  # float16 kept in the store but converted by numpy for a float32 graph
        k16.astype(np.float32), v16.astype(np.float32), k_all.astype(np.float16), v_all.astype(np.float16)

    # --- timings: (CPU, wall) microseconds per call ---------------------------------------------
    n, r = args.n, args.repeats
    feed_full = full_feed(L)
    t_full = per_call_us(lambda: full.run(["user_vec"], feed_full), n, r)
    feed1 = step_feed(cache_1, L - 1, 1)
    t_step1 = per_call_us(lambda: step.run(HSTU_STEP_OUTPUTS, feed1), n, r)
    feed1_16 = step_feed(cache16_1, L - 1, 1)
    t_step1_16 = per_call_us(lambda: step16.run(HSTU_STEP_OUTPUTS, feed1_16), n, r)
    cache_5 = encode_by_steps(L - 5)
    feed5 = step_feed(cache_5, L - 5, 5)
    t_step5 = per_call_us(lambda: step.run(HSTU_STEP_OUTPUTS, feed5), n, r)
    paired = paired_cpu_us(
        [
            lambda: full.run(["user_vec"], feed_full),
            lambda: step.run(HSTU_STEP_OUTPUTS, feed1),
            lambda: step.run(HSTU_STEP_OUTPUTS, feed5),
        ],
        n,
        r,
    )
    t_rt32 = per_call_us(lambda: round_trip(k_all, v_all), n, r)
    t_rt16 = per_call_us(lambda: round_trip(k16, v16), n, r)
    t_np16 = per_call_us(numpy_half, n, r)

    # a whole life: events 1..L one at a time; every length is timed once per repeat
    def life_full() -> None:
        for end in range(1, L + 1):
            full.run(["user_vec"], full_feed(end))

    life_n = max(1, n // 100)
    t_life_steps = [x / L for x in per_call_us(lambda: encode_by_steps(L), life_n, r)]
    t_life_full = [x / L for x in per_call_us(life_full, life_n, r)]

    with torch.no_grad():
        base = model.extend(
            model.empty_cache(),
            torch.as_tensor(items[:, : L - 1]),
            torch.as_tensor(times[:, : L - 1]) if timed else None,
        )[0]
        new_items = torch.as_tensor(items[:, L - 1 :])
        t_full_torch = per_call_us(lambda: model(*full_args), n, r)
        t_step_torch = per_call_us(lambda: model.extend(base, new_items, new_t), n, r)

    cfg = model.cfg
    result = {
        "model": (
            f"HSTU d {cfg.dim}, {cfg.num_layers} layers, {cfg.num_heads} head(s), max_len {cfg.max_len}, "
            f"time_buckets {cfg.time_buckets}, {model.num_items} items ({source}); batch 1, 1 thread"
        ),
        "runtime": "onnxruntime (CPUExecutionProvider, 1 intra-op thread); torch eager for reference",
        "length": L,
        "step_graph": {**spec, "bytes": step_bytes},
        "step_graph_float16": spec16,
        "model_onnx_bytes": full_bytes,
        "cpu_us_full_encode_onnx": round(t_full[0], 1),
        "cpu_us_step_1_event_onnx": round(t_step1[0], 1),
        "cpu_us_step_1_event_float16_cache_onnx": round(t_step1_16[0], 1),
        "cpu_us_step_5_events_onnx": round(t_step5[0], 1),
        "step_over_full_onnx": round(paired[1] / paired[0], 3),
        "step5_per_event_over_full_onnx": round(paired[2] / 5 / paired[0], 3),
        "interleaved_cpu_us_full_step1_step5_onnx": [round(x, 1) for x in paired],
        "life_cpu_us_per_event_steps_onnx": round(t_life_steps[0], 1),
        "life_cpu_us_per_event_full_onnx": round(t_life_full[0], 1),
        "life_steps_over_full_onnx": round(t_life_steps[0] / t_life_full[0], 3),
        "cpu_us_full_encode_torch": round(t_full_torch[0], 1),
        "cpu_us_step_1_event_torch": round(t_step_torch[0], 1),
        "step_over_full_torch": round(t_step_torch[0] / t_full_torch[0], 3),
        "wall_us": {
            "full_encode_onnx": round(t_full[1], 1),
            "step_1_event_onnx": round(t_step1[1], 1),
            "step_1_event_float16_cache_onnx": round(t_step1_16[1], 1),
            "step_5_events_onnx": round(t_step5[1], 1),
            "life_per_event_steps_onnx": round(t_life_steps[1], 1),
            "life_per_event_full_onnx": round(t_life_full[1], 1),
            "full_encode_torch": round(t_full_torch[1], 1),
            "step_1_event_torch": round(t_step_torch[1], 1),
        },
        "max_abs_diff_step_vs_full_onnx": parity,
        "max_abs_diff_step_vs_full_torch": parity_torch,
        "user_vec_norm": float(np.linalg.norm(want)),
        "max_abs_diff_float16_cache": fp16_err,
        "cache_bytes_per_user_float32": bytes32,
        "cache_bytes_per_user_float16": bytes16,
        "cpu_us_cache_to_bytes_and_back_float32": round(t_rt32[0], 1),
        "cpu_us_cache_to_bytes_and_back_float16": round(t_rt16[0], 1),
        "cpu_us_numpy_float16_float32_conversion": round(t_np16[0], 1),
        "user_vector_bytes": int(want.nbytes),
    }
    path = write_result(args.name, result)
    print(path)
    for key, value in result.items():
        if key not in ("step_graph", "step_graph_float16", "wall_us"):
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
