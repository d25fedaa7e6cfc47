"""The oracle: numpygpt against PyTorch autograd and HuggingFace's GPT2LMHeadModel on the same
weights, and numpygpt's safetensors against the `safetensors` package.

Skipped unless torch and transformers import:  pip install torch==2.13.0   (the CPU build is
enough)  then  pip install -e ".[oracle]".

A small random GPT2LMHeadModel in float64, every parameter random (LayerNorm weights and biases
and all biases too, so none is tested only at its initial 1 or 0), saved by HuggingFace, loaded
by GPT.from_pretrained. Compared on batches with -100 labels and padding:
  logits                    relative error <= 1e-10
  loss                      against torch.nn.functional.cross_entropy on shifted float64 logits
                            (HuggingFace's own loss up/down-casts; this one is exact float64)
  every parameter gradient  from loss.backward(), relative error <= 1e-9
with the chunked lm_head + loss and the standard one (Execution(loss=...)), the tiled attention
as well as the standard one, and both tiers: the textbook (numpygpt/layers/) and the engine.
Sliding-window attention (which GPT-2 has not): each core, both tiers, against torch's
scaled_dot_product_attention with a banded boolean mask, also with a KV cache's extra keys;
a windowed GPT against gradcheck.oracle's torch model, whose attention is that same SDPA.
Relative error is numpygpt.gradcheck.relative_error: max |a - b| / max(|a|, |b|) over a tensor.

HuggingFace masks padded keys with the most negative float, not -inf, and a query row whose
every key is masked (a left-padding position) gets some distribution there, not the zero row
numpygpt defines. So with left padding, logits are compared at real positions only; the loss
and gradients never see those rows (their labels are -100 and no real query attends to them).

`python tests/test_oracle.py` prints the largest errors measured (the figures in docs/interop.md).
"""
import importlib
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

ORACLE_MODULES = ("torch", "transformers", "safetensors.numpy", "safetensors.torch")


def missing_oracle_modules():
    """The oracle's modules that do not import, each with its reason."""
    missing = []
    for name in ORACLE_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as e:
            missing.append(f"{name} ({e})")
    return missing


if __name__ == "__main__" and missing_oracle_modules():     # run as a script without the oracle:
    print("tests/test_oracle.py: skipped: the oracle needs " +            # say so, exit 0
          "; ".join(missing_oracle_modules()) +
          ". Install: pip install torch==2.13.0 (the CPU build), then pip install -e '.[oracle]'")
    sys.exit(0)

torch = pytest.importorskip(
    "torch", reason="oracle tests need PyTorch: pip install torch==2.13.0 (CPU is enough), "
                    "then pip install -e '.[oracle]'")
transformers = pytest.importorskip(
    "transformers", reason="oracle tests need transformers: pip install -e '.[oracle]'")
safetensors_numpy = pytest.importorskip(
    "safetensors.numpy", reason="oracle tests need the safetensors package: pip install -e '.[oracle]'")
safetensors_torch = pytest.importorskip("safetensors.torch", reason="needs safetensors with torch")

import numpygpt as ng                                              # noqa: E402
from numpygpt.io import safetensors as sft                         # noqa: E402
from numpygpt.gradcheck import relative_error, unit_scale_params   # noqa: E402

V, P, C, L, H = 29, 16, 12, 2, 3
TOL_LOGITS, TOL_LOSS, TOL_GRAD = 1e-10, 1e-10, 1e-9
IGNORE = -100


def hf_model(tied=True, seed=0, eps=1e-5):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=V, n_positions=P, n_embd=C, n_layer=L, n_head=H,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                  layer_norm_epsilon=eps, tie_word_embeddings=tied,
                                  bos_token_id=V - 1, eos_token_id=V - 1)
    cfg._attn_implementation = "eager"         # the textbook attention, exact in float64
    model = transformers.GPT2LMHeadModel(cfg).double().eval()
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.normal_(0.0, 0.3)
    assert (model.lm_head.weight is model.transformer.wte.weight) == tied
    return model


def batch(kind, seed=0, B=3, T=11):
    """input_ids, attention_mask, HF-form labels (B,T), position_ids (for HF) or None."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, size=(B, T))
    lengths = [T, T - 4, 3][:B]
    mask = np.zeros((B, T), dtype=np.int64)
    for b, n in enumerate(lengths):
        if kind == "left":
            mask[b, T - n:] = 1
        else:
            mask[b, :n] = 1
    if kind == "full":
        mask[:] = 1
    labels = np.where(mask == 1, ids, IGNORE)
    labels[rng.random((B, T)) < 0.25] = IGNORE          # a prompt-masking-like scatter of -100
    # A sequence's first token has no real position before it to predict it. With left padding
    # HF-form labels = ids would make the last *pad* position predict it: -100 it (as
    # ng.causal_lm_labels does), else that loss term depends on a fully masked attention row.
    labels[np.arange(B), mask.argmax(axis=1)] = IGNORE
    ids = np.where(mask == 1, ids, V - 1)                # pad id: the end-of-text token
    pos = ng.position_ids_from_mask(mask) if kind == "left" else None
    return ids, mask, labels, pos


def torch_reference(model, ids, mask, labels, pos):
    """HF logits, the float64 loss on shifted logits, and every parameter's gradient."""
    model.zero_grad()
    kwargs = {"attention_mask": torch.tensor(mask)}
    if pos is not None:
        kwargs["position_ids"] = torch.tensor(pos)
    logits = model(torch.tensor(ids), **kwargs).logits                   # (B,T,V) float64
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, V), torch.tensor(labels)[:, 1:].reshape(-1), ignore_index=IGNORE)
    loss.backward()
    grads = {name.removeprefix("transformer."): p.grad.numpy().copy()
             for name, p in model.named_parameters()}
    return logits.detach().numpy(), loss.item(), grads


def compare(model_hf, tmp_path, kind, attention="standard", seed=0, loss="chunked",
            engine="textbook"):
    """Largest relative errors of logits, loss and gradients, numpygpt vs torch."""
    model_hf.save_pretrained(tmp_path)
    execution = ng.Execution(engine=engine, attention=attention, loss=loss, q_tile=4, k_tile=4)
    ours = ng.GPT.from_pretrained(tmp_path, dtype=np.float64, execution=execution)
    assert ours.execution == execution
    ids, mask, labels, pos = batch(kind, seed)
    ref_logits, ref_loss, ref_grads = torch_reference(model_hf, ids, mask, labels, pos)

    logits = ours.logits(ids, attention_mask=mask, position_ids=pos)
    real = mask.astype(bool)                    # see the module docstring: real positions only
    loss, grads = ours.loss_and_grads(ids, ng.labels_from_hf(labels), attention_mask=mask,
                                      position_ids=pos)
    assert sorted(grads) == sorted(ref_grads)
    return {"logits": relative_error(logits[real], ref_logits[real]),
            "loss": abs(loss - ref_loss) / abs(ref_loss),
            "grads": max(relative_error(grads[k], ref_grads[k]) for k in grads),
            "worst_grad": max(grads, key=lambda k: relative_error(grads[k], ref_grads[k]))}


CASES = [(tied, kind) for tied in (True, False) for kind in ("full", "right", "left")]
LOSSES = ["chunked", "standard"]      # the chunked lm_head + loss, and logits then loss
ENGINES = ["textbook", "fast"]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("tied,kind", CASES)
def test_logits_loss_and_every_gradient_match_torch(tmp_path, tied, kind, loss, engine):
    err = compare(hf_model(tied, seed=1), tmp_path, kind, seed=2, loss=loss, engine=engine)
    assert err["logits"] <= TOL_LOGITS, err
    assert err["loss"] <= TOL_LOSS, err
    assert err["grads"] <= TOL_GRAD, err


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("kind", ["right", "left"])
def test_tiled_attention_matches_torch(tmp_path, kind, loss, engine):
    err = compare(hf_model(True, seed=3), tmp_path, kind, attention="tiled", seed=4, loss=loss,
                  engine=engine)
    assert err["logits"] <= TOL_LOGITS and err["loss"] <= TOL_LOSS and err["grads"] <= TOL_GRAD, err


def test_layer_norm_epsilon_is_carried(tmp_path):
    err = compare(hf_model(True, seed=5, eps=1e-2), tmp_path, "right", seed=6)
    assert err["logits"] <= TOL_LOGITS and err["grads"] <= TOL_GRAD, err


def test_the_comparison_can_fail(tmp_path):
    """A one-ulp-scale change to one LayerNorm bias is seen: the tolerances are not vacuous."""
    model_hf = hf_model(True, seed=7)
    model_hf.save_pretrained(tmp_path)
    ours = ng.GPT.from_pretrained(tmp_path, dtype=np.float64)
    ours.params["h.1.ln_2.bias"][0] += 1e-6
    ids, mask, labels, pos = batch("right", 8)
    ref_logits, _, _ = torch_reference(model_hf, ids, mask, labels, pos)
    assert relative_error(ours.logits(ids, attention_mask=mask), ref_logits) > TOL_LOGITS


@pytest.mark.parametrize("tied", [True, False])
def test_transformers_loads_what_numpygpt_writes(tmp_path, tied):
    cfg = ng.GPTConfig(vocab_size=V, n_positions=P, n_embd=C, n_head=H, n_layer=L,
                       tie_word_embeddings=tied, layer_norm_epsilon=1e-6)
    rng = np.random.default_rng(9)
    ours = ng.GPT(cfg, dtype=np.float64,
                  params={k: rng.normal(0, 0.3, s) for k, s in ng.param_shapes(cfg).items()})
    ours.save_pretrained(tmp_path)
    model_hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, attn_implementation="eager")
    model_hf = model_hf.double().eval()
    assert model_hf.config.tie_word_embeddings == tied
    assert model_hf.config.layer_norm_epsilon == 1e-6
    ids, mask, _, _ = batch("right", 10)
    with torch.no_grad():
        ref = model_hf(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    assert relative_error(ours.logits(ids, attention_mask=mask), ref) <= TOL_LOGITS
    # and the reference reader sees exactly our tensors
    theirs = safetensors_numpy.load_file(str(tmp_path / "model.safetensors"))
    names = {(k if k == "lm_head.weight" else "transformer." + k): k for k in ours.params}
    assert sorted(theirs) == sorted(names)
    assert all(np.array_equal(theirs[n], ours.params[k]) for n, k in names.items())


def test_our_reader_agrees_on_huggingfaces_file(tmp_path):
    hf_model(False, seed=11).save_pretrained(tmp_path)
    path = str(tmp_path / "model.safetensors")
    ref = safetensors_numpy.load_file(path)
    ours, meta = sft.load_file(path)
    assert meta == {"format": "pt"} and sorted(ours) == sorted(ref)
    assert all(ours[k].dtype == ref[k].dtype and ours[k].tobytes() == ref[k].tobytes() for k in ref)


# ---- our writer / reader against the reference implementation of the format --------------------
DTYPES = ["<f8", "<f4", "<f2", "<i8", "<i4", "<i2", "i1", "u1", "<u2", "<u4", "<u8", "?"]


@st.composite
def tensor_dict(draw):
    out = {}
    for i in range(draw(st.integers(0, 4))):
        dtype = np.dtype(draw(st.sampled_from(DTYPES)))
        shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
        n = int(np.prod(shape)) * dtype.itemsize
        raw = draw(st.binary(min_size=n, max_size=n))
        if dtype == np.bool_:
            raw = bytes(b & 1 for b in raw)
        out[f"t{i}.{draw(st.text('abc._', max_size=3))}"] = np.frombuffer(raw, dtype).reshape(shape).copy()
    return out


@settings(max_examples=10)
@given(tensors=tensor_dict())
def test_files_agree_with_the_safetensors_package(tmp_path_factory, tensors):
    d = tmp_path_factory.mktemp("st")
    ours_path, ref_path = str(d / "ours.safetensors"), str(d / "ref.safetensors")
    sft.save_file(tensors, ours_path, metadata={"format": "np"})
    safetensors_numpy.save_file(tensors, ref_path, metadata={"format": "np"})
    for loaded in (safetensors_numpy.load_file(ours_path), sft.load_file(ref_path)[0]):
        assert sorted(loaded) == sorted(tensors)
        for k, t in tensors.items():
            assert loaded[k].dtype == t.dtype and loaded[k].shape == t.shape
            assert loaded[k].tobytes() == t.tobytes(), k


def test_bf16_agrees_with_torch(tmp_path):
    x = torch.randn(257, dtype=torch.float32) * 1e3
    x[:4] = torch.tensor([0.0, -0.0, float("inf"), 3.4e38])
    ref = x.to(torch.bfloat16)
    safetensors_torch.save_file({"w": ref}, str(tmp_path / "torch.safetensors"))
    ours, _ = sft.load_file(tmp_path / "torch.safetensors")
    assert ours["w"].dtype == np.float32 and np.array_equal(ours["w"], ref.float().numpy())
    sft.save_file({"w": x.numpy()}, tmp_path / "ours.safetensors", dtypes={"w": "BF16"})
    back = safetensors_torch.load_file(str(tmp_path / "ours.safetensors"))["w"]
    assert back.dtype == torch.bfloat16 and torch.equal(back.view(torch.int16), ref.view(torch.int16))


def measure():
    """The largest errors over all cases, for docs/interop.md."""
    import tempfile
    worst = {"logits": 0.0, "loss": 0.0, "grads": 0.0}
    cases = [(t, k, "standard", loss, e) for t, k in CASES for loss in LOSSES for e in ENGINES]
    cases += [(True, k, "tiled", loss, e) for k in ("right", "left") for loss in LOSSES
              for e in ENGINES]
    for tied, kind, attention, loss, engine in cases:
        with tempfile.TemporaryDirectory() as d:
            err = compare(hf_model(tied, seed=1), d, kind, attention, seed=2, loss=loss,
                          engine=engine)
        print(f"tied={tied!s:5} padding={kind:5} attn={attention:8} loss={loss:8} "
              f"engine={engine:8}  logits {err['logits']:.1e}  "
              f"loss {err['loss']:.1e}  grads {err['grads']:.1e} ({err['worst_grad']})")
        for k in worst:
            worst[k] = max(worst[k], err[k])
    print(f"largest relative error: logits {worst['logits']:.1e}, loss {worst['loss']:.1e}, "
          f"gradients {worst['grads']:.1e}  (torch {torch.__version__}, "
          f"transformers {transformers.__version__})")


if __name__ == "__main__":
    measure()


# ---- sliding-window attention: torch's SDPA with a banded mask --------------------------------

def banded_sdpa(q, k, v, window):
    """torch: the queries are the last T of Tk positions; query i (at Tk - T + i) may attend
    to key j when 0 <= (Tk - T + i) - j < window: a boolean mask for SDPA (True = attend)."""
    T, Tk = q.shape[-2], k.shape[-2]
    i = torch.arange(T)[:, None] + (Tk - T)
    j = torch.arange(Tk)[None, :]
    band = (i - j >= 0) & (i - j < window)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=band)


@pytest.mark.parametrize("window", [1, 3, 7])
@pytest.mark.parametrize("extra", [0, 4])                    # a KV cache's earlier keys
@pytest.mark.parametrize("engine,core", [(e, c) for e in ENGINES for c in ("standard", "tiled")])
def test_windowed_cores_match_torch_sdpa(window, extra, engine, core):
    from numpygpt.bench.attention import CORES
    rng = np.random.default_rng(window + extra)
    B, Hh, T, D = 2, 3, 9, 4
    q, dy = rng.standard_normal((B, Hh, T, D)), rng.standard_normal((B, Hh, T, D))
    k, v = (rng.standard_normal((B, Hh, T + extra, D)) for _ in range(2))
    forward, backward = CORES[engine, core]
    tiles = (2, 3) if core == "tiled" else ()
    y, cache = forward(q, k, v, None, *tiles, window=window)
    grads = [g.copy() for g in backward(dy, cache)[0]]
    leaves = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    y_ref = banded_sdpa(*leaves, window)
    (y_ref * torch.tensor(dy)).sum().backward()
    assert relative_error(y, y_ref.detach().numpy()) <= TOL_GRAD
    # relative to the largest gradient: with W = 1 a query sees itself only, and dq is 0
    # (numpygpt: exactly; torch: ~1e-17), where an error relative to dq itself means nothing
    scale = max(float(np.abs(leaf.grad.numpy()).max()) for leaf in leaves)
    for g, leaf in zip(grads, leaves):
        assert float(np.abs(g - leaf.grad.numpy()).max()) <= TOL_GRAD * scale


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("attention", ["standard", "tiled"])
@pytest.mark.parametrize("window", [1, 2, 5])
def test_windowed_gpt_matches_torch(window, attention, engine):
    """The zoo's GPT with sliding_window against gradcheck.oracle's torch model (its attention:
    SDPA with a banded mask), loss and every gradient, on SFT sequences longer than W."""
    import dataclasses
    from numpygpt.gradcheck import problems
    from numpygpt.gradcheck.oracle import model_oracle
    base = problems.zoo_model(0)
    cfg = dataclasses.replace(base.config, sliding_window=window)
    model = ng.GPT(cfg, dtype=np.float64, params=base.params,
                   execution=ng.Execution(engine=engine, attention=attention, q_tile=2, k_tile=3))
    examples = problems.zoo_examples(0)
    b = problems.model_batch(examples)
    assert b["input_ids"].shape[1] > window
    loss, grads = model.loss_and_grads(**b)
    ref_loss, ref = model_oracle(model.params, cfg, examples, problems.EOT)
    assert abs(loss - ref_loss) <= TOL_LOSS * abs(ref_loss)
    assert max(relative_error(grads[k], ref[k]) for k in ref) <= TOL_GRAD
    _, full = model_oracle(model.params, base.config, examples, problems.EOT)   # no window:
    assert max(relative_error(grads[k], full[k]) for k in ref) > 1e-3          # it differs


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("attention", ["standard", "tiled"])
@pytest.mark.parametrize("n_kv_head", [1, 2])
def test_grouped_query_gpt_matches_torch(n_kv_head, attention, engine):
    """A GPT with K key/value heads against gradcheck.oracle's torch model, whose c_attn is
    split [C, KD, KD] and whose k, v are repeated by torch's own repeat_interleave: loss and
    every gradient, on the zoo's padded SFT batch, with a window too."""
    import dataclasses
    from numpygpt.gradcheck import problems
    from numpygpt.gradcheck.oracle import model_oracle
    rng = np.random.default_rng(n_kv_head)
    for window in (None, 3):
        cfg = dataclasses.replace(problems.ZOO_CONFIG, n_head=4, n_kv_head=n_kv_head,
                                  sliding_window=window)
        model = ng.GPT(cfg, dtype=np.float64, execution=ng.Execution(
            engine=engine, attention=attention, q_tile=2, k_tile=3))
        unit_scale_params(model.params, rng)
        examples = problems.zoo_examples(0)
        loss, grads = model.loss_and_grads(**problems.model_batch(examples))
        ref_loss, ref = model_oracle(model.params, cfg, examples, problems.EOT)
        assert model.params["h.0.attn.c_attn.weight"].shape[1] == cfg.n_embd * (1 + 2 * n_kv_head / 4)
        assert abs(loss - ref_loss) <= TOL_LOSS * abs(ref_loss)
        assert max(relative_error(grads[k], ref[k]) for k in ref) <= TOL_GRAD
