"""What each exercise file says: the imports its given forward needs (and the textbook pieces
a composite exercise may call), the backward's signature, and its docstring: what to compute,
from what in the cache, with the shapes. The forward itself is copied from the textbook.
"""

STUBS = {
    "linear": ("import numpy as np", "linear_backward(dout, cache)", '''
    dout (B,T,Cout), cache = (x (B,T,Cin), weight (Cin,Cout)) -> dx, {"weight": dW, "bias": db}.

    out = x @ W + b. Each gradient has the shape of what it is the gradient of:
        dx (B,T,Cin)         one row of dout per row of x, through W
        dW (Cin,Cout)        W is used by every row (N = B*T of them): their shares add up
        db (Cout,)           the same for b
    Here W is square (Cin = Cout): a missing transpose runs, and gives wrong numbers.'''),
    "embedding": ("import numpy as np", "embedding_backward(dx, cache)", '''
    dx (B,T,C), cache = (input_ids (B,T), position_ids (B,T), shapes {name: table shape})
    -> None, {"wte.weight": (V,C), "wpe.weight": (n_positions,C)}.

    x[b, t] = wte[ids[b, t]] + wpe[pos[b, t]]: row ids[b, t] of dwte gets dx[b, t] added,
    and so does row pos[b, t] of dwpe. An id that appears three times gets three rows added:
    `dwte[ids] += rows` keeps only one of them (look up np.add.at). Token ids have no
    gradient: return None in dx's place.'''),
    "gelu": ("import math\n\nimport numpy as np\n\n"
             "from numpygpt.layers.gelu import GELU_SCALE, GELU_COEF", "gelu_backward(dout, cache)",
             '''
    dout (...), cache = (x,) -> dx (...), {} (GELU has no parameters).

    gelu(x) = 0.5 x (1 + th), th = tanh(s (x + k x^3)), s = GELU_SCALE, k = GELU_COEF
    dx = dout * gelu'(x): differentiate the product, and tanh' = 1 - tanh^2.
    (This is GPT-2's tanh form, not the exact erf GELU: their derivatives differ by ~1e-3.)'''),
    "layernorm": ("import numpy as np", "layernorm_backward(dout, cache)", '''
    dout (B,T,C), cache = (xhat (B,T,C), rstd (B,T,1), weight (C,))
    -> dx (B,T,C), {"weight": (C,), "bias": (C,)}.

    out = xhat * weight + bias, xhat = (x - mean) * rstd, mean and rstd over the last axis.
        dweight, dbias: summed over the rows, as in the linear layer
        dxhat = dout * weight            name it dxhat: the checker compares it too
        dx (B,T,C): mean and rstd are functions of x too; differentiate through both
            (each changes with every input of the row). The result fits on one line.'''),
    "cross_entropy": ("import numpy as np", "cross_entropy_backward(cache)", '''
    cache = (logits (B,T,V), labels (B,T), ignore_index) -> dlogits (B,T,V), the gradient of
    the mean loss over the counted positions (label != ignore_index, i.e. -100).

    loss_n = logsumexp(z_n) - z_n[y_n] for a counted position n; loss = the mean over the
    count of counted positions. Derive d loss_n / d z_n (a softmax appears), divide by the
    count; an ignored row adds nothing to the loss, so its gradient is 0. Subtract the row
    max before exp.'''),
    "attention_core": ("import math\n\nimport numpy as np\n\n"
                       "from numpygpt.layers.attention import softmax\n"
                       "from numpygpt.layers.causal_mask import allowed_keys",
                       "causal_attention_backward(dy, cache)", '''
    dy (B,H,T,D), cache = (q (B,H,T,D), k, v (B,H,Tk,D), P (B,H,T,Tk) the probabilities)
    -> (dq, dk, dv), {}.

    S = q k^T / sqrt(D), masked to -inf; P = softmax(S) row by row; y = P v. Backward:
        dv = P^T dy                      (B,H,Tk,D)
        dP = dy v^T                      (B,H,T,Tk)  name it dP: the checker compares it
        dS = the softmax's backward (B,H,T,Tk): each P[.., i, j] depends on every
             S[.., i, :] of its row                                      name it dS
        dq = dS k / sqrt(D),  dk = dS^T q / sqrt(D)
    A masked entry has P = 0: no gradient flows through it (a row with every key masked,
    a left-padding query, has P = 0 and gets 0 everywhere).'''),
    "attention": ("import numpy as np\n\n"
                  "from numpygpt.layers import (linear_forward, linear_backward, sub, prefixed,\n"
                  "                             split_heads, merge_heads, rope_forward,\n"
                  "                             causal_attention_forward, causal_attention_backward,\n"
                  "                             tiled_attention_forward)\n"
                  "from numpygpt.layers.attention import repeat_kv, repeat_kv_backward",
                  "attention_backward(dout, cache)", '''
    dout (B,T,C), cache = (c_attn_cache, rope_cache, attention, core_cache, c_proj_cache,
    n_head, n_kv_head) -> dx (B,T,C), {"c_attn.weight", "c_attn.bias", "c_proj.weight", "c_proj.bias"}.
    Here rope_cache is None and attention is "standard"; n_kv_head = K = 1 key/value head
    is shared by the n_head = H = 2 query heads (repeat_kv copied it to each).

    Undo the forward line by line: the output projection (linear_backward), the heads
    (B,T,C) -> (B,H,T,D) as split_heads does it, the core (causal_attention_backward,
    imported above; or paste yours from exercise 6), the copies of k and v (a copy's
    gradient is the sum over its copies: repeat_kv_backward), q (B,T,C), k and v (B,T,KD)
    side by side (B,T,C+2KD), the qkv projection. Name each gradient as the parameter:
    prefixed("c_attn", grads).'''),
    "mlp": ("from numpygpt.layers import (linear_forward, linear_backward, gelu_forward,\n"
            "                             gelu_backward, sub, prefixed)",
            "mlp_backward(dout, cache)", '''
    dout (B,T,C), cache = (fc_cache, gelu_cache, proj_cache)
    -> dx (B,T,C), {"c_fc.weight", "c_fc.bias", "c_proj.weight", "c_proj.bias"}.

    h = x W_fc + b_fc (B,T,4C), a = gelu(h), out = a W_proj + b_proj: three backwards in
    reverse order (linear_backward, gelu_backward: imported above, or paste yours).'''),
    "block": ("from numpygpt.config import Execution\n"
              "from numpygpt.layers import (layernorm_forward, layernorm_backward, attention_forward,\n"
              "                             attention_backward, mlp_forward, mlp_backward, sub,\n"
              "                             prefixed)",
              "block_backward(dout, cache)", '''
    dout (B,T,C), cache = (ln_1_cache, attn_cache, ln_2_cache, mlp_cache)
    -> dx (B,T,C), grads named "ln_1.weight", "attn.c_attn.weight", ..., "mlp.c_proj.bias".

    x = x + attn(ln_1(x)); out = x + mlp(ln_2(x)). A residual x + f(x) passes its gradient
    to x twice: unchanged, and through f. Add both, at each of the two residuals.'''),
    "tied_lm_head": ("from numpygpt.layers import (embedding_forward, embedding_backward,\n"
                     "                             layernorm_forward, layernorm_backward,\n"
                     "                             lm_head_forward, lm_head_backward)",
                     "tied_backward(dlogits, cache)", '''
    dlogits (B,T,V), cache = (emb_cache, ln_f_cache, head_cache)
    -> None, {"wte.weight": (V,C), "wpe.weight", "ln_f.weight", "ln_f.bias"}.

    wte is used twice: to look the tokens up, and as the lm_head (logits = h @ wte^T). Its
    gradient is the sum of both uses' gradients. lm_head_backward gives {"weight": ...};
    embedding_backward gives {"wte.weight", "wpe.weight"}; layernorm_backward the middle.'''),
    "gpt": ("import numpy as np\n\n"
            "from numpygpt.config import Execution\n"
            "from numpygpt.layers import (sub, prefixed, embedding_forward, embedding_backward,\n"
            "                             layernorm_forward, layernorm_backward, rope_cos_sin,\n"
            "                             lm_head_forward, lm_head_backward, cross_entropy,\n"
            "                             lm_head_cross_entropy)\n"
            "from numpygpt.model import block_forward, block_backward",
            "gpt_backward(cache)", '''
    cache = (top, ln_f_cache, block_caches, emb_cache, tied) from gpt_forward with labels,
    top = ("standard", dlogits (B,T,V), head_cache): the loss has given its gradient already.
    -> {name: gradient} with every parameter's name: "wte.weight", "wpe.weight",
    "h.0.ln_1.weight", ..., "ln_f.bias" (tied is True: there is no "lm_head.weight").

    Walk the forward back up: lm_head, ln_f, the blocks in reverse order (block_backward,
    imported above; prefix each block's names with "h.{i}"), the embedding. wte's
    gradient is the sum of its two uses (exercise 10).'''),
    "tiled_attention": ("import math\n\nimport numpy as np\n\n"
                        "from numpygpt.layers.causal_mask import allowed_keys",
                        "tiled_attention_backward(dy, cache)", '''
    dy (B,H,T,D), cache = (q, k, v, key_mask (B,Tk) or None, q_tile, k_tile, y (B,H,T,D),
    lse (B,H,T,1) the log-sum-exp of each query's scores) -> (dq, dk, dv), {}.

    No P was kept: recompute each tile's probabilities from the saved log-sum-exp,
        P_ij = exp(S_ij - lse_i),  S_ij = q_i k_j^T / sqrt(D), masked as in the forward
    (allowed_keys(T, Tk, key_mask, (i0, i1), (j0, j1))). Then, per tile, as in exercise 6,
        dv_j += P_ij^T dy_i,  dP_ij = dy_i v_j^T,  dS_ij = P_ij (dP_ij - delta_i),
        dq_i += dS_ij k_j / sqrt(D),  dk_j += dS_ij^T q_i / sqrt(D)
    where delta_i = rowsum(dy_i * y_i) equals rowsum(dP_i * P_i) (the whole row's). Visit the
    same tiles as the forward: query blocks of q_tile, key tiles of k_tile up to the block's
    last query.'''),
}
