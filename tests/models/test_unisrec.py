"""UniSRec model: the serving contract, causality, modes, adaptor, and the BERT text encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.unisrec import MoEAdaptor, UniSRec, UniSRecConfig


def _model(mode: str = "inductive", n: int = 30, **kw) -> UniSRec:
    torch.manual_seed(0)
    kw.setdefault("new_item_head", 0.0)  # the paper's scoring unless a test turns the head on
    m = UniSRec(UniSRecConfig(num_items=n, max_len=8, dim=16, num_heads=2, text_dim=12, mode=mode, **kw))
    with torch.no_grad():
        m.text_emb[1:] = torch.randn(n, 12)
    return m.eval()


@pytest.mark.parametrize("mode", ["inductive", "transductive"])
def test_contract_shapes_and_unit_vectors(mode: str) -> None:
    m = _model(mode)
    seq = torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 4, 5]])
    u = m(seq)
    table = m.item_vectors()
    assert u.shape == (2, 16) and table.shape == (31, 16)
    assert torch.allclose(u.norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.allclose(table[1:].norm(dim=1), torch.ones(30), atol=1e-5)
    assert torch.all(table[0] == 0)
    assert torch.allclose(m.score(seq), u @ table.T)


def test_padding_and_truncation_do_not_change_user_vector() -> None:
    m = _model()
    a = m(torch.tensor([[3, 4, 5]]))
    b = m(torch.tensor([[0, 0, 0, 3, 4, 5]]))
    assert torch.allclose(a, b, atol=1e-5)
    long = torch.arange(1, 13)[None]  # 12 > max_len 8: only the newest 8 are read
    assert torch.allclose(m(long), m(long[:, -8:]), atol=1e-5)


def test_causal_hidden_states() -> None:
    m = _model()
    h1 = m.hidden(torch.tensor([[1, 2, 3, 4]]))
    h2 = m.hidden(torch.tensor([[1, 2, 3, 9]]))
    assert torch.allclose(h1[:, :3], h2[:, :3], atol=1e-5)
    assert not torch.allclose(h1[:, 3], h2[:, 3])


def test_encode_on_item_vectors_equals_forward() -> None:
    """The seq-encoder path (what the service runs for new items) equals the id path."""
    m = _model("transductive")
    seq = torch.tensor([[0, 7, 8, 9], [1, 2, 3, 4]])
    vecs = m.item_vectors()[seq]
    assert torch.allclose(m.encode(vecs, (seq != 0).long()), m(seq), atol=1e-6)


def test_inductive_ignores_ids_transductive_uses_them() -> None:
    ind = _model("inductive")
    assert ind.item_emb is None
    # Inductive: an item's vector is a function of its text only.
    assert torch.allclose(ind.item_vectors()[5], ind.adapt(ind.text_emb[5]), atol=1e-6)
    tr = _model("transductive")
    with torch.no_grad():
        tr.item_emb.weight[5] += 1.0
    assert not torch.allclose(tr.item_vectors()[5], tr.adapt(tr.text_emb[5]), atol=1e-3)


def test_moe_gating_noise_only_in_training() -> None:
    torch.manual_seed(0)
    ada = MoEAdaptor(6, 4, num_experts=3, dropout=0.0)
    with torch.no_grad():
        ada.w_noise.fill_(1.0)
        ada.w_gate.normal_()
    x = torch.randn(5, 6)
    ada.eval()
    assert torch.allclose(ada(x), ada(x))
    ada.train()
    assert not torch.allclose(ada(x), ada(x))


def test_whitening_is_x_minus_b_times_w() -> None:
    m = _model()
    pw = m.adaptor.experts[0].eval()
    x = torch.randn(3, 12)
    want = (x - pw.bias) @ pw.lin.weight.T
    assert torch.allclose(pw(x), want, atol=1e-6)


def test_gradients_reach_adaptor_and_encoder() -> None:
    m = _model("transductive").train()
    loss = m(torch.tensor([[1, 2, 3]])).sum() + m.item_vectors().sum()
    loss.backward()
    assert m.adaptor.experts[0].lin.weight.grad is not None
    assert m.blocks[0].attn.qkv.weight.grad is not None
    assert m.item_emb.weight.grad is not None


def test_text_encoder_loads_minilm_and_is_semantic() -> None:
    from training.text import TextEmbedder

    e = TextEmbedder()
    v = e.encode(["scientific calculator", "Casio calculator for school", "ergonomic office chair"])
    assert v.shape == (3, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sim = v @ v.T
    assert sim[0, 1] > sim[0, 2] + 0.2
    # Batch composition (padding) must not change an embedding.
    alone = e.encode(["scientific calculator"])
    assert np.abs(alone[0] - v[0]).max() < 1e-5


def test_fast_paths_equal_reference_in_eval() -> None:
    m = _model("transductive")
    seq = torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 4, 5]])
    h, table = m.hidden_and_table(seq)
    assert torch.allclose(h, m.hidden(seq), atol=1e-6)
    assert torch.allclose(table, m.item_vectors())
    assert torch.allclose(m.score(seq), m(seq) @ m.item_vectors().T, atol=1e-6)


def test_frozen_text_channel_is_pca_whitening_and_untrained() -> None:
    m = _model(text_skip=5.0)
    x = m.text_emb[1:]
    m.fit_text_channel(x)
    z = (x - m.skip_mean) @ m.skip_proj  # (30, 16); only 12 text dims to take components from
    # Whitened principal components: orthonormal columns over the fitted rows.
    assert torch.allclose(z[:, :12].T @ z[:, :12], torch.eye(12), atol=1e-4)
    assert torch.all(z[:, 12:] == 0)
    expected = torch.nn.functional.normalize(m.adaptor(x) + 5.0 * torch.nn.functional.normalize(z, dim=-1), dim=-1)
    assert torch.allclose(m.adapt(x), expected, atol=1e-6)
    assert torch.allclose(m.item_vectors()[1:], expected, atol=1e-6)
    # A buffer, not a parameter: training never moves it.
    names = {n for n, _ in m.named_parameters()}
    assert not names & {"skip_mean", "skip_proj"}
    # text_skip = 0 is the paper's adaptor, channel or not.
    plain = _model()
    plain.fit_text_channel(plain.text_emb[1:])
    assert torch.allclose(plain.adapt(x), torch.nn.functional.normalize(plain.adaptor(x), dim=-1), atol=1e-6)


def test_unwhitened_text_channel_keeps_the_text_geometry() -> None:
    m = _model(text_skip=5.0, text_skip_whiten=False)
    x = m.text_emb[1:]
    m.fit_text_channel(x)
    z = (x - m.skip_mean) @ m.skip_proj  # (30, 16): all 12 components kept, none rescaled
    centred = x - x.mean(0)
    # A rotation (times one constant): the Gram matrix of the centred text is preserved.
    gram_z, gram_x = z @ z.T, centred @ centred.T
    assert torch.allclose(gram_z / gram_z.diagonal().max(), gram_x / gram_x.diagonal().max(), atol=1e-4)
    whitened = _model(text_skip=5.0)
    whitened.fit_text_channel(x)
    assert not torch.allclose(whitened.skip_proj, m.skip_proj)


def test_new_item_head_adds_text_cosine_only_after_a_new_item() -> None:
    off, on = _model(), _model(new_item_head=2.0)  # same seed: same weights and text
    for m in (off, on):
        m.trained[25:] = 0  # items 25..30 had no training interaction
    t = torch.nn.functional.normalize(on.text_emb, dim=-1)
    with torch.no_grad():
        for seq in ([[3, 4, 5]], [[27, 4, 5]]):  # newest item known: plain UniSRec scores
            x = torch.tensor(seq)
            assert torch.allclose(on.score(x), off.score(x), atol=1e-6)
        x = torch.tensor([[3, 4, 27]])  # newest item new: + beta * cos(text_27, text_i)
        assert torch.allclose(on.score(x), off.score(x) + 2.0 * (t[27] @ t.T), atol=1e-5)
        # One inner product serves it: rows [v, t, new], user [s, beta * new * t, 0].
        rows, u = on.item_vectors(), on(x)
        assert rows.shape == (31, 16 + 12 + 1) and u.shape == (1, 29)
        assert torch.equal(rows[1:, -1], 1 - on.trained[1:]) and torch.all(rows[0] == 0)
        assert torch.allclose(u @ rows.T, on.score(x), atol=1e-6)
        assert torch.allclose(on.encode(rows[x], (x != 0).long()), u, atol=1e-6)
        # A new item's text through the adaptor = its catalogue row (inductive), flagged new.
        assert torch.allclose(on.adapt(on.text_emb[27:28]), rows[27:28], atol=1e-6)
        assert on.adapt(on.text_emb[3:4])[0, -1] == 1
