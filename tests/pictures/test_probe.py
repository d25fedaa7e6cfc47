"""The tensors probe keeps, against the textbook's own backward: a c_proj bias is added to
every row, so its gradient is the sum of the gradient at that layer's output."""
import numpy as np
import pytest

from numpygpt.config import GPTConfig
from numpygpt.model import GPT
from numpygpt.pictures import probe


def tiny(pos_encoding="learned", seed=0):
    cfg = GPTConfig(vocab_size=11, n_positions=8, n_embd=8, n_head=2, n_layer=2,
                    pos_encoding=pos_encoding)
    return GPT(cfg, seed=seed, dtype=np.float64)


def batch():
    ids = np.array([[1, 4, 2, 7, 3, 5], [6, 2, 9, 1, 0, 0]])
    labels = np.array([[4, 2, 7, 3, 5, -100], [-100, -100, 1, -100, -100, -100]])
    mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    return ids, labels, mask


@pytest.mark.parametrize("pos_encoding", ["learned", "rope"])
def test_gradients_at_the_outputs_sum_to_the_bias_gradients(pos_encoding):
    model = tiny(pos_encoding)
    ids, labels, mask = batch()
    run = probe(model, ids, labels, mask)
    loss, grads = model.loss_and_grads(ids, labels, mask)
    assert run["loss"] == pytest.approx(loss, rel=1e-12)
    for i, b in enumerate(run["blocks"]):
        np.testing.assert_allclose(b["d_attn_out"].sum(axis=(0, 1)),
                                   grads[f"h.{i}.attn.c_proj.bias"], rtol=1e-10, atol=1e-15)
        np.testing.assert_allclose(b["d_mlp_out"].sum(axis=(0, 1)),
                                   grads[f"h.{i}.mlp.c_proj.bias"], rtol=1e-10, atol=1e-15)
        assert b["d_gelu_out"].shape == b["gelu_in"].shape == (2, 6, 32)


def test_the_gelu_gradient_gives_the_c_fc_bias_gradient():
    model = tiny()
    ids, labels, mask = batch()
    run = probe(model, ids, labels, mask)
    _, grads = model.loss_and_grads(ids, labels, mask)
    for i, b in enumerate(run["blocks"]):           # h = x @ W_fc + b_fc; gelu_out = gelu(h)
        dh = b["d_gelu_out"] * b["gelu_slope"]
        np.testing.assert_allclose(dh.sum(axis=(0, 1)), grads[f"h.{i}.mlp.c_fc.bias"],
                                   rtol=1e-10, atol=1e-15)


def test_the_gradient_below_the_first_block_gives_the_position_embedding_gradient():
    model = tiny()
    ids, labels, mask = batch()
    run = probe(model, ids, labels)                # no padding: positions 0..T-1 in each row
    _, grads = model.loss_and_grads(ids, labels)
    np.testing.assert_allclose(run["d_embedding"].sum(axis=0), grads["wpe.weight"][:6],
                               rtol=1e-10, atol=1e-15)


def test_outputs_are_the_blocks_own():
    """attn_out + mlp_out added to the embedding, block after block, give the last block's
    output; its ln_f and lm_head give the model's logits."""
    from numpygpt.layers import embedding_forward, layernorm_forward, lm_head_forward, sub
    model = tiny()
    ids, labels, _ = batch()
    run = probe(model, ids, labels)
    x, _ = embedding_forward(ids, {k: model.params[k] for k in ("wte.weight", "wpe.weight")})
    for b in run["blocks"]:
        x = x + b["attn_out"] + b["mlp_out"]
    x, _ = layernorm_forward(x, sub(model.params, "ln_f"))
    logits, _ = lm_head_forward(x, {"weight": model.params["wte.weight"]})
    np.testing.assert_allclose(logits, model.logits(ids), rtol=1e-10, atol=1e-12)


def test_bad_input_is_refused_before_any_work():
    model = tiny()
    with pytest.raises(ValueError, match="input_ids"):
        probe(model, np.array([[1, 99]]), np.array([[1, -100]]))
    with pytest.raises(ValueError, match="labels"):
        probe(model, np.array([[1, 2]]), np.array([[1, 2, 3]]))
