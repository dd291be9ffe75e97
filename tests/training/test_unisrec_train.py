"""UniSRec end to end on real data (ML-100K text), with a tiny local BERT directory as the
text encoder so the test takes seconds: text cache, training via the shared loop,
pre-training + --init, the bundle (ONNX parity, a brand-new item through
tokenizer -> text_encoder.onnx -> adaptor.onnx -> seq_encoder.onnx), and cold start."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.bert import write_tiny_bert


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def _train(ml100k, out: Path, tiny_bert: Path, mode: str, **train_kw):
    from training.train import train

    return train(
        "unisrec",
        ml100k,
        out,
        {"dim": 16, "max_len": 20, "num_heads": 2, "text_dim": 32, "mode": mode, "text_encoder": str(tiny_bert)},
        {"epochs": 1, "max_users": 120, "batch_size": 64, **train_kw},
        progress=False,
    )


def test_text_embeddings_cached_and_loaded_bert_dir_round_trips(ml100k, tiny_bert: Path, tmp_path: Path) -> None:
    from training.data import item_text
    from training.text import TextEmbedder, item_text_embeddings

    cache_dir = tmp_path / "own-cache"  # other tests fill the session cache with their own entries

    text = item_text("ml-100k")
    t1 = item_text_embeddings(ml100k, text, tiny_bert, cache_dir)
    assert t1.shape == (ml100k.num_items + 1, 32) and np.all(t1[0] == 0)
    files = list((cache_dir / "text_emb").glob("*.npy"))
    assert len(files) == 1
    assert np.array_equal(item_text_embeddings(ml100k, text, tiny_bert, cache_dir), t1)  # from the cache
    e = TextEmbedder(tiny_bert)
    assert np.allclose(e.encode([text[ml100k.item_ids[4]]])[0], t1[5], atol=1e-5)


def test_train_export_bundle_and_new_item_through_onnx(ml100k, tiny_bert: Path, tmp_path: Path) -> None:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    from training.export import export_bundle
    from training.text import TextEmbedder
    from training.train import load_checkpoint

    res = _train(ml100k, tmp_path / "run", tiny_bert, "transductive")
    assert res.valid["users"] > 0
    bundle = export_bundle(tmp_path / "run" / "best.pt", tmp_path / "art", "u", program=False)
    man = json.loads((bundle / "manifest.json").read_text())
    text = man["text"]
    for f in ("seq_encoder.onnx", "adaptor.onnx", "text_encoder.onnx", "tokenizer.json"):
        assert (bundle / f).is_file() and f in man["files"]
    assert max(text["parity_max_abs_diff"].values()) <= 1e-4  # every graph, on the same input
    assert text["new_item_end_to_end_max_abs_diff"] <= 1e-3  # chained (see NEW_ITEM_END_TO_END_TOL)
    assert max(man["parity_max_abs_diff"].values()) <= 1e-4

    model, _ = load_checkpoint(tmp_path / "run" / "best.pt")
    # A brand-new item, the way the service does it: tokenizers + onnxruntime only.
    new_text = "Brand New Film (2031). Genres: Documentary, Sci-Fi"
    tok = Tokenizer.from_file(str(bundle / text["tokenizer"]))
    enc = tok.encode(new_text)
    ids = np.array([enc.ids], np.int64)
    te = ort.InferenceSession(str(bundle / "text_encoder.onnx"))
    ada = ort.InferenceSession(str(bundle / "adaptor.onnx"))
    seq = ort.InferenceSession(str(bundle / "seq_encoder.onnx"))
    emb = te.run(["text_emb"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
    vec = ada.run(["item_vec"], {"text_emb": emb})[0]
    with torch.no_grad():
        eager = model.adapt(torch.as_tensor(TextEmbedder(tiny_bert).encode([new_text]))).numpy()
    assert np.abs(vec - eager).max() <= 1e-4
    # A history that ends with the new item, scored over catalogue + new item.
    table = np.load(bundle / "item_vectors.npy")
    hist = np.concatenate([table[[3, 7]], vec])[None].astype(np.float32)  # (1, 3, D)
    user = seq.run(["user_vec"], {"item_vecs": hist, "mask": np.ones((1, 3), np.int64)})[0]
    with torch.no_grad():
        ref = model.encode(torch.as_tensor(hist), torch.ones(1, 3, dtype=torch.long)).numpy()
    assert np.abs(user - ref).max() <= 1e-4
    # Catalogue rows in the bundle are exactly what the model scores with.
    with torch.no_grad():
        assert np.allclose(table, model.item_vectors()[1:].numpy(), atol=1e-6)


def test_pretrain_then_init_loads_weights_and_freeze(ml100k, tiny_bert: Path, tmp_path: Path) -> None:
    from training.unisrec import PretrainConfig, pretrain

    over = {"dim": 16, "max_len": 20, "num_heads": 2, "text_dim": 32, "text_encoder": str(tiny_bert)}
    ckpt = pretrain(PretrainConfig(("ml-100k",), epochs=1, batch_size=128), tmp_path / "pt", over, log=False)
    pre = torch.load(ckpt, weights_only=False)
    assert pre["kind"] == "unisrec-pretrain"
    assert not any(k.startswith(("text_emb", "item_emb")) for k in pre["state_dict"])

    from training.train import load_checkpoint

    _train(ml100k, tmp_path / "ft", tiny_bert, "inductive", extra={"init": str(ckpt)}, lr=0.0)
    model, _ = load_checkpoint(tmp_path / "ft" / "best.pt")
    # lr=0: fine-tuning changed nothing, so the model holds exactly the pre-trained weights.
    for k, v in pre["state_dict"].items():
        assert torch.equal(model.state_dict()[k], v), k

    from models.unisrec import UniSRec, UniSRecConfig
    from training.unisrec import load_pretrained

    wrong = UniSRec(UniSRecConfig(num_items=5, dim=24, num_heads=2, text_dim=32))
    with pytest.raises(ValueError, match="do not fit"):
        load_pretrained(wrong, ckpt)

    from training.config import ContrastiveConfig, TrainConfig
    from training.unisrec import setup_unisrec

    frozen = UniSRec(
        UniSRecConfig(
            num_items=ml100k.num_items,
            dim=16,
            max_len=20,
            text_dim=32,
            freeze_encoder=True,
            text_encoder=str(tiny_bert),
        )
    )
    setup_unisrec(frozen, ml100k, TrainConfig(), ContrastiveConfig())
    assert not any(p.requires_grad for p in frozen.sequence_params())
    assert all(p.requires_grad for p in frozen.adaptor.parameters())


def test_cold_start_split_and_baselines(ml100k) -> None:
    from training.cold_start import cold_start_split, evaluate_cold_start, text_knn_score_fn

    sp = cold_start_split(ml100k, 0.1)
    assert len(sp.cold_items) == round(0.1 * ml100k.num_items)
    cold = set(sp.cold_items.tolist())
    assert not cold & set(sp.train_data.items.tolist())  # no cold interaction left in training
    assert sp.train_data.item_ids == ml100k.item_ids  # catalogue unchanged
    assert len(sp.targets) > 0 and set(sp.targets.tolist()) <= cold
    # Cold items are the newest: each first appears no earlier than any warm item does.
    first = {}
    for i, t in zip(ml100k.items.tolist(), ml100k.timestamps.tolist(), strict=True):
        first[i] = min(first.get(i, t), t)
    assert min(first[c] for c in cold) >= max(v for k, v in first.items() if k not in cold)

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(ml100k.num_items + 1, 8)).astype(np.float32)
    res = evaluate_cold_start(sp, {}, 50, ml100k.num_items, emb)
    assert set(res) == {"popularity", "text_knn"}
    assert res["popularity"]["hr@10"] == 0.0  # never-seen items have zero training count
    # text kNN: scoring with the last history item's text vector.
    fn = text_knn_score_fn(emb)
    s = fn(torch.tensor([[0, 3, 5]]))
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    assert np.allclose(s.numpy()[0], e @ e[5], atol=1e-5)


def test_cold_validation_split_and_text_channel_fit_on_training_items(ml100k, tiny_bert: Path, tmp_path: Path) -> None:
    from training.cold_start import cold_start_split, cold_validation_split
    from training.export import export_bundle
    from training.train import load_checkpoint, train

    sp = cold_start_split(ml100k, 0.1)
    cold = set(sp.cold_items.tolist())
    assert len(sp.valid_targets) > 0 and set(sp.valid_targets.tolist()) <= cold
    split = cold_validation_split(sp)
    assert split.test_hist is sp.hists and not cold & {int(i) for s in split.train for i in s}
    # A validation history is the sequence before its second-to-last item: the test item never in it.
    seqs = [ml100k.sequence(u) for u in range(ml100k.num_users)]
    want = [(s[:-2], s[-2]) for s in seqs if len(s) >= 3 and s[-2] in cold]
    assert len(want) == len(sp.valid_hists)
    for (h, t), got_h, got_t in zip(want, sp.valid_hists, sp.valid_targets, strict=True):
        assert np.array_equal(h, got_h) and t == got_t

    over = {"dim": 16, "max_len": 20, "num_heads": 2, "text_dim": 32, "text_skip": 3.0, "text_encoder": str(tiny_bert)}
    over["new_item_head"] = 1.5
    tc = {"epochs": 1, "batch_size": 64, "extra": {"text_from": "ml-100k"}}
    train("unisrec", sp.train_data, tmp_path / "run", over, tc, progress=False, split=split)
    model, _ = load_checkpoint(tmp_path / "run" / "best.pt")
    # The new-item flag: 0 exactly for items outside the training part (every cold item among them).
    trained = np.zeros(ml100k.num_items + 1, np.float32)
    for s in split.train:
        trained[s] = 1
    assert np.array_equal(model.trained.numpy(), trained) and not trained[sp.cold_items].any()
    seen = np.unique(sp.train_data.items)
    assert torch.allclose(model.skip_mean, model.text_emb[torch.as_tensor(seen)].mean(0), atol=1e-5)
    assert not torch.allclose(model.skip_mean, model.text_emb[1:].mean(0), atol=1e-5)  # cold text left out
    # The channel is inside the exported adaptor graph: parity holds and a new item is scored with it.
    bundle = export_bundle(tmp_path / "run" / "best.pt", tmp_path / "art", "cold", program=False)
    man = json.loads((bundle / "manifest.json").read_text())
    assert max(man["text"]["parity_max_abs_diff"].values()) <= 1e-4
    # The service loads it as is (its own checks: seq_encoder = model.onnx, adaptor width), and a
    # history ending in a cold item gets the head: served user vector = the model's.
    from app.bundles.loader import load_bundle

    b = load_bundle(bundle)
    assert b.dim == 16 + 32 + 1 == man["text"]["adaptor"]["dim"]
    hist = np.array([int(seen[0]), int(sp.cold_items[0])])
    with torch.no_grad():
        want = model(torch.as_tensor(hist)[None]).numpy()
    np.testing.assert_allclose(b.user_vectors([hist]), want, atol=1e-4)
    assert np.abs(want[0, 16:]).max() > 0  # the head is on for this history


@pytest.mark.real_data("ml-100k")  # train checks the dataset before --init
def test_cli_pretrain_help_and_missing_init(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from training.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["pretrain", "--help"])
    assert r.exit_code == 0 and "--datasets" in r.output
    r = runner.invoke(app, ["train", "--model", "unisrec", "--dataset", "ml-100k", "--init", str(tmp_path / "no.pt")])
    assert r.exit_code == 2 and "not found" in r.output


def test_items_without_training_interactions_are_not_negatives() -> None:
    import torch.nn.functional as F

    from models.unisrec import UniSRec, UniSRecConfig
    from training.tasks import ContrastiveNextItemTask

    torch.manual_seed(0)
    m = UniSRec(UniSRecConfig(num_items=6, max_len=4, dim=8, num_heads=2, text_dim=5, new_item_head=0.0)).eval()
    with torch.no_grad():
        m.text_emb[1:] = torch.randn(6, 5)
    batch = {"item_seq": torch.tensor([[0, 1, 2]]), "target": torch.tensor([[0, 2, 3]])}
    cand = torch.tensor([False, True, True, True, True, True, False])  # item 6: never in training
    tau = 0.5
    masked = ContrastiveNextItemTask(4, temperature=tau, candidates=cand).loss(m, batch)
    full = ContrastiveNextItemTask(4, temperature=tau).loss(m, batch)
    with torch.no_grad():
        h = m.hidden(batch["item_seq"])[0, 1:]  # (2, D): positions with a target
        logits = h @ m.item_vectors().T / tau  # (2, 7)
        pos = torch.tensor([2, 3])
    # The softmax runs over items 1..5 only (0 = padding, 6 = not in training), resp. 1..6.
    assert torch.allclose(masked, F.cross_entropy(logits[:, 1:6], pos - 1), atol=1e-5)
    assert torch.allclose(full, F.cross_entropy(logits[:, 1:7], pos - 1), atol=1e-5)


def test_generic_file_with_items_file(ml100k, tiny_bert: Path, tmp_path: Path, cache_dir: Path) -> None:
    """Any interactions file + an items file beside it (id + text columns) trains UniSRec."""
    from training.data import item_text, prepare_file
    from training.train import train

    rows = ["user_id,item_id,timestamp"]
    for u in range(150):
        s, t = ml100k.sequence(u), ml100k.times(u)
        rows += [f"u{u},m{ml100k.item_ids[i - 1]},{ts}" for i, ts in zip(s.tolist(), t.tolist(), strict=True)]
    (tmp_path / "events.csv").write_text("\n".join(rows))
    text = item_text("ml-100k")
    items = ["item_id,title"] + [f'm{k},"{v.replace(chr(34), "")}"' for k, v in text.items()]
    (tmp_path / "items.csv").write_text("\n".join(items))
    data = prepare_file(tmp_path / "events.csv", cache_dir=cache_dir)
    res = train(
        "unisrec",
        data,
        tmp_path / "run",
        {"dim": 16, "max_len": 20, "num_heads": 2, "text_dim": 32, "text_encoder": str(tiny_bert)},
        {"epochs": 1, "batch_size": 64, "extra": {"items_file": str(tmp_path / "items.csv")}},
        progress=False,
    )
    assert res.test["users"] > 0
    from training.text import TextEmbedder
    from training.train import load_checkpoint

    model, _ = load_checkpoint(tmp_path / "run" / "best.pt")
    first = data.item_ids[0]  # e.g. "m1": its row holds the embedding of its title from items.csv
    want = TextEmbedder(tiny_bert).encode([text[first[1:]].replace('"', "")])[0]
    assert np.abs(model.text_emb[1].numpy() - want).max() < 1e-5


def test_pretraining_runs_on_the_shared_loop_and_its_budget_stops_it_mid_epoch(
    ml100k, tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pre-training's steps are training/loop.py's: the budget acts at the next step, not at the
    end of an epoch, and the epoch cut short is marked and still saved."""
    import training.budget
    import training.loop
    from training.unisrec import PretrainConfig, pretrain

    steps: list[int] = []
    step = training.loop.Optimisation.step

    def counting_step(self, batch):  # the shared loop's step, counted
        steps.append(1)
        return step(self, batch)

    now = [0.0]

    def clock() -> float:  # 10 s pass per optimiser step: a 0.5-minute budget ends after step 3
        return now[0] + 10.0 * len(steps)

    monkeypatch.setattr(training.loop.Optimisation, "step", counting_step)
    monkeypatch.setattr(training.budget, "clock", clock)
    over = {"dim": 16, "max_len": 20, "num_heads": 2, "text_dim": 32, "text_encoder": str(tiny_bert)}
    pc = PretrainConfig(("ml-100k",), epochs=3, batch_size=64, max_minutes=0.5)
    ckpt = pretrain(pc, tmp_path / "pt", over, log=False)
    rows = [json.loads(x) for x in (tmp_path / "pt" / "pretrain_metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 4  # 40 s > 30 s once the 4th step is done (ML-100K has 15 batches of 64)
    assert rows == [{"epoch": 1, "loss": rows[0]["loss"], "elapsed_seconds": 40.0, "steps": 4, "partial": True}]
    assert torch.load(ckpt, weights_only=False)["epoch"] == 1
