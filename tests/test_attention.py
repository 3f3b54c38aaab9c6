"""Every attention kernel equals the dense reference: prefixes of any length, left and right
padding, per-row prefix masks, GQA, cached steps; forward and gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prefix_jax.data.tokens import left_pad
from prefix_jax.infer import decode
from prefix_jax.models import PrefixKV, load
from prefix_jax.models import attention as att
from prefix_jax.models.attention import AttentionMask, attention
from prefix_jax.models.config import ModelConfig
from prefix_jax.scale import aot, sharding

PREFIX_LENGTHS = (0, 1, 7, 64)
HEADS, KV_HEADS, HEAD_DIM = 6, 2, 16


def token_mask(batch: int, length: int, padding: str) -> np.ndarray:
    """Rows of decreasing length padded on `padding`'s side; the first row is full."""
    mask = np.zeros((batch, length), bool)
    for row in range(batch):
        n = length - 5 * row
        if padding == "left":
            mask[row, length - n :] = True
        else:
            mask[row, :n] = True
    return mask


def prefix_mask(batch: int, p: int, mixed: bool) -> np.ndarray:
    """All prefix slots visible, or (mixed) row r sees its first p - 3r (at least 0)."""
    mask = np.ones((batch, p), bool)
    if mixed:
        for row in range(batch):
            mask[row, max(p - 3 * row, 0) :] = False
    return mask


def self_attention_case(rng, p: int, padding: str, mixed: bool = False, batch=3, length=37):
    """q/k/v and the mask of a no-cache forward pass: keys are [prefix, tokens]."""
    q = rng.normal(size=(batch, length, HEADS, HEAD_DIM))
    k = rng.normal(size=(batch, p + length, KV_HEADS, HEAD_DIM))
    v = rng.normal(size=(batch, p + length, KV_HEADS, HEAD_DIM))
    tokens = token_mask(batch, length, padding)
    mask = AttentionMask(
        query_slots=jnp.arange(length, dtype=jnp.int32),
        key_slots=jnp.concatenate([jnp.full((p,), -1, jnp.int32), jnp.arange(length)]),
        key_valid=jnp.asarray(np.concatenate([prefix_mask(batch, p, mixed), tokens], 1)),
        query_valid=jnp.asarray(tokens),
        prefix_length=p,
        self_aligned=True,
    )
    return (jnp.asarray(x, jnp.float32) for x in (q, k, v)), mask


def cached_case(rng, p: int, batch=3, new=5, cache=48, index=29):
    """A cached step: `new` queries written at slot `index` of a cache that holds the prefix
    in its first p slots (as decoding lays it out), earlier rows partly left-padded."""
    s = p + cache
    q = rng.normal(size=(batch, new, HEADS, HEAD_DIM))
    k = rng.normal(size=(batch, s, KV_HEADS, HEAD_DIM))
    v = rng.normal(size=(batch, s, KV_HEADS, HEAD_DIM))
    valid = np.zeros((batch, s), bool)
    valid[:, :p] = prefix_mask(batch, p, mixed=True)
    for row in range(batch):
        valid[row, p + 4 * row : p + index + new] = True
    mask = AttentionMask(
        query_slots=jnp.arange(p + index, p + index + new, dtype=jnp.int32),
        key_slots=jnp.arange(s, dtype=jnp.int32),
        key_valid=jnp.asarray(valid),
        query_valid=jnp.ones((batch, new), bool),
        prefix_length=0,
    )
    return (jnp.asarray(x, jnp.float32) for x in (q, k, v)), mask


def float64_reference(q, k, v, mask: AttentionMask, scale=None, softcap=0.0) -> np.ndarray:
    """Softmax attention in float64 NumPy (scores scaled, then soft-capped); zero at padding
    queries."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    group = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
    scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    scores = np.einsum("bthd,bshd->bhts", q, k) * scale
    if softcap:
        scores = softcap * np.tanh(scores / softcap)
    visible = np.asarray(mask.dense())[:, None]
    scores = np.where(visible, scores, -np.inf)
    scores -= scores.max(-1, keepdims=True)
    probs = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
    out = np.einsum("bhts,bshd->bthd", probs, v)
    return np.where(np.asarray(mask.query_valid)[:, :, None, None], out, 0)


def weighted_sum(implementation: str, mask: AttentionMask, **kw):
    """A scalar of the attention output with distinct weights per position (for grads)."""

    def f(q, k, v):
        out = attention(q, k, v, mask, implementation, **kw)
        weights = jnp.sin(jnp.arange(out.size, dtype=jnp.float32).reshape(out.shape))
        return (out.astype(jnp.float32) * weights).sum()

    return f


@pytest.fixture
def small_flash_blocks(monkeypatch):
    """Tiles of 8 so that short test sequences span several blocks (and skipped tiles)."""
    monkeypatch.setattr(att, "FLASH_BLOCK", 8)


@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("p", PREFIX_LENGTHS)
def test_flash_equals_float64_reference(p, padding, small_flash_blocks):
    (q, k, v), mask = self_attention_case(np.random.default_rng(p), p, padding, mixed=p > 1)
    out = attention(q, k, v, mask, "flash")
    np.testing.assert_allclose(out, float64_reference(q, k, v, mask), atol=1e-5)
    np.testing.assert_allclose(out, attention(q, k, v, mask, "xla"), atol=1e-5)


@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("p", PREFIX_LENGTHS)
def test_flash_gradients_equal_dense(p, padding, small_flash_blocks):
    (q, k, v), mask = self_attention_case(np.random.default_rng(p), p, padding, mixed=p > 1)
    want = jax.grad(weighted_sum("xla", mask), argnums=(0, 1, 2))(q, k, v)
    got = jax.grad(weighted_sum("flash", mask), argnums=(0, 1, 2))(q, k, v)
    for name, a, b in zip("qkv", got, want, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, err_msg=f"d{name}")
    if p:  # the prefix's own gradient is not trivially zero
        assert float(jnp.abs(got[1][:, :p]).max()) > 1e-3


def test_flash_cached_step_equals_dense(small_flash_blocks):
    (q, k, v), mask = cached_case(np.random.default_rng(0), p=7)
    out = attention(q, k, v, mask, "flash")
    np.testing.assert_allclose(out, float64_reference(q, k, v, mask), atol=1e-5)
    want = jax.grad(weighted_sum("xla", mask), argnums=(0, 1, 2))(q, k, v)
    got = jax.grad(weighted_sum("flash", mask), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_flash_bfloat16_error_is_that_of_dense(small_flash_blocks):
    """In bf16 both kernels round; flash's error from float64 stays within 2x of dense's."""
    (q, k, v), mask = self_attention_case(np.random.default_rng(1), 7, "left", mixed=True)
    exact = float64_reference(q, k, v, mask)
    q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
    errors = {
        kind: float(np.abs(np.asarray(attention(q, k, v, mask, kind), np.float64) - exact).max())
        for kind in ("xla", "flash")
    }
    assert errors["flash"] <= max(2 * errors["xla"], 2e-2), errors


@pytest.mark.parametrize(
    ("p", "padding", "mixed"), [(0, "right", False), (7, "left", True), (64, "right", True)]
)
def test_splash_interpreted_equals_dense(p, padding, mixed):
    """The TPU kernel through Pallas' interpreter on CPU: forward and gradients."""
    (q, k, v), mask = self_attention_case(np.random.default_rng(p), p, padding, mixed, batch=2)
    splash = att.splash(q, k, v, mask, interpret=True)
    splash = jnp.where(mask.query_valid[:, :, None, None], splash, 0)
    np.testing.assert_allclose(splash, float64_reference(q, k, v, mask), atol=1e-5)

    def splash_sum(q, k, v):
        out = jnp.where(
            mask.query_valid[:, :, None, None], att.splash(q, k, v, mask, None, True), 0
        )
        weights = jnp.sin(jnp.arange(out.size, dtype=jnp.float32).reshape(out.shape))
        return (out * weights).sum()

    want = jax.grad(weighted_sum("xla", mask), argnums=(0, 1, 2))(q, k, v)
    got = jax.grad(splash_sum, argnums=(0, 1, 2))(q, k, v)
    for name, a, b in zip("qkv", got, want, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, err_msg=f"d{name}")


def test_sliding_window_keeps_the_prefix_visible(small_flash_blocks):
    """Mistral's window (key > query - w) over token keys; the prefix is seen by all."""
    p, t, w = 7, 37, 5
    (q, k, v), mask = self_attention_case(np.random.default_rng(5), p, "left", mixed=True)
    mask = mask.replace(window=w)
    query, key = np.arange(t)[:, None], np.arange(t)[None, :]
    recent = (key <= query) & (key > query - w)
    expected = np.concatenate([np.ones((t, p), bool), recent], 1)[None]
    expected = expected & np.asarray(mask.key_valid)[:, None, :]
    np.testing.assert_array_equal(mask.dense(), expected)
    for kind in ("flash", "splash"):  # splash has no window: it runs flash
        out = attention(q, k, v, mask, kind)
        np.testing.assert_allclose(out, float64_reference(q, k, v, mask), atol=1e-5)
    want = jax.grad(weighted_sum("xla", mask), argnums=(0, 1, 2))(q, k, v)
    got = jax.grad(weighted_sum("flash", mask), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


# Gemma 2's attention: scale 24 ** -0.5 (not head_dim's), logits capped at 2 (these scores
# of N(0, 1) inputs reach about 4x the cap, so a missing cap shows).
SCALE, CAP = 24**-0.5, 2.0


def assert_grads_equal(got, want, atol=1e-5):
    for name, a, b in zip("qkv", got, want, strict=True):
        np.testing.assert_allclose(a, b, atol=atol, err_msg=f"d{name}")


def test_soft_cap_and_scale_in_every_kernel(small_flash_blocks):
    """xla, flash and splash (interpreted) equal the float64 reference with a scale and a
    soft-cap, forward; flash's custom VJP and splash's gradients equal xla's autodiff."""
    (q, k, v), mask = self_attention_case(np.random.default_rng(8), 7, "left", True, batch=2)
    kw = dict(scale=SCALE, softcap=CAP)
    want = float64_reference(q, k, v, mask, **kw)
    assert np.abs(float64_reference(q, k, v, mask, scale=SCALE) - want).max() > 0.1
    for kind in ("xla", "flash"):
        np.testing.assert_allclose(attention(q, k, v, mask, kind, **kw), want, atol=1e-5)

    def splash_sum(q, k, v):
        out = att.splash(q, k, v, mask, None, True, **kw)
        out = jnp.where(mask.query_valid[:, :, None, None], out, 0)
        return (out * jnp.sin(jnp.arange(out.size, dtype=jnp.float32).reshape(out.shape))).sum()

    splash_out = jnp.where(
        mask.query_valid[:, :, None, None], att.splash(q, k, v, mask, None, True, **kw), 0
    )
    np.testing.assert_allclose(splash_out, want, atol=1e-5)
    dense = jax.grad(weighted_sum("xla", mask, **kw), argnums=(0, 1, 2))(q, k, v)
    assert_grads_equal(
        jax.grad(weighted_sum("flash", mask, **kw), argnums=(0, 1, 2))(q, k, v), dense
    )
    assert_grads_equal(jax.grad(splash_sum, argnums=(0, 1, 2))(q, k, v), dense)
    # cuDNN's API has no soft-cap: `attention` runs flash for it (on CPU too, hence this).
    np.testing.assert_allclose(attention(q, k, v, mask, "cudnn", **kw), want, atol=1e-5)


WINDOWS = (5, 0, 3)  # a scan over local and global layers (0 = global)


def scanned(implementation: str, mask: AttentionMask, softcap: float = CAP, **kw):
    """Attention of each layer of a scan whose window is a traced per-layer input."""

    def run(q, k, v):
        def layer(_, window):
            layer_mask = mask.replace(window=window)
            if implementation == "cudnn_via_xla":
                return None, att.cudnn(q, k, v, layer_mask, implementation="xla", scale=SCALE)
            out = attention(q, k, v, layer_mask, implementation, scale=SCALE, softcap=softcap)
            return None, out

        outs = jax.lax.scan(layer, None, jnp.asarray(WINDOWS, jnp.int32))[1]
        return jnp.where(mask.query_valid[None, :, :, None, None], outs, 0)

    return run


@pytest.mark.parametrize("case", ["self", "cached"])
def test_traced_per_layer_window_in_every_kernel(case, small_flash_blocks):
    """Each layer of the scan equals the float64 reference with that window as a static
    int; the prefix stays visible under every window; flash's gradients (tile skipping by
    the traced window) equal xla's."""
    rng = np.random.default_rng(9)
    if case == "self":
        (q, k, v), mask = self_attention_case(rng, 7, "left", mixed=True, batch=2)
    else:
        (q, k, v), mask = cached_case(rng, p=7, batch=2)
    kinds = [("xla", CAP), ("flash", CAP), ("cudnn_via_xla", 0.0)]
    kinds += [("splash", CAP)] if case == "self" else []  # a window: splash runs flash
    for kind, cap in kinds:
        outs = scanned(kind, mask, cap)(q, k, v)
        for out, window in zip(outs, WINDOWS, strict=True):
            want = float64_reference(q, k, v, mask.replace(window=window), SCALE, cap)
            np.testing.assert_allclose(out, want, atol=1e-5, err_msg=f"{kind}, window {window}")

    def total(kind):
        def f(q, k, v):
            outs = scanned(kind, mask)(q, k, v)
            return (
                outs * jnp.sin(jnp.arange(outs.size, dtype=jnp.float32).reshape(outs.shape))
            ).sum()

        return jax.grad(f, argnums=(0, 1, 2))(q, k, v)

    assert_grads_equal(total("flash"), total("xla"))


def test_splash_refuses_cached_layouts():
    (q, k, v), mask = cached_case(np.random.default_rng(0), p=7)
    with pytest.raises(ValueError, match="prefix, the query tokens"):
        att.splash(q, k, v, mask)
    # through `attention`, a cached step under splash runs flash instead
    np.testing.assert_allclose(
        attention(q, k, v, mask, "splash"), attention(q, k, v, mask, "xla"), atol=1e-5
    )


def test_cudnn_arguments_give_the_dense_result():
    """What we hand cuDNN, run through the same API's XLA implementation."""
    (q, k, v), mask = self_attention_case(np.random.default_rng(3), 7, "left", mixed=True)
    out = jnp.where(
        mask.query_valid[:, :, None, None], att.cudnn(q, k, v, mask, implementation="xla"), 0
    )
    np.testing.assert_allclose(out, float64_reference(q, k, v, mask), atol=1e-5)


def test_auto_per_platform_and_bad_names():
    long, short = 2048 * 2058, 64 * 74
    assert att.resolve("auto", "tpu", short) == "splash"
    assert att.resolve("auto", "gpu", long) == att.resolve("auto", "cpu", long) == "flash"
    assert att.resolve("auto", "gpu", short) == att.resolve("auto", "cpu", short) == "xla"
    assert att.resolve("xla", "tpu", long) == "xla"
    assert att.pin_platform("auto", "tpu") == "splash"
    assert att.pin_platform("auto", "cpu") == "auto"
    with pytest.raises(ValueError, match="unknown attention implementation 'flesh'.*flash"):
        att.resolve("flesh")


# --- through the model --------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tiny_checkpoints):
    """The tiny GQA Llama (6 heads, 2 KV heads, 3 layers) under the dense and flash kernels."""
    return {
        kind: load(str(tiny_checkpoints["llama"]), with_tokenizer=False, attention=kind)[0]
        for kind in ("xla", "flash")
    }


def model_prefix(model, p: int, batch: int, mixed: bool, seed=0) -> PrefixKV:
    c = model.config
    shape = (c.num_layers, batch, p, c.num_kv_heads, c.head_dim)
    keys, values = jax.random.normal(jax.random.key(seed), (2, *shape))
    return PrefixKV(keys=keys, values=values, mask=jnp.asarray(prefix_mask(batch, p, mixed)))


# Every prefix length and both paddings (the kernel tests above take the full grid).
@pytest.mark.parametrize(
    ("p", "padding"),
    [(0, "right"), (1, "left"), (7, "right"), pytest.param(64, "left", marks=pytest.mark.slow)],
)
def test_model_logits_and_prefix_gradients_equal_dense(models, p, padding, small_flash_blocks):
    rng = np.random.default_rng(p)
    tokens_mask = token_mask(3, 29, padding)
    tokens = jnp.asarray(rng.integers(1, 100, tokens_mask.shape) * tokens_mask, jnp.int32)
    prefix = model_prefix(models["xla"], p, 3, mixed=p > 1) if p else None

    def loss(keys_values, model):
        given = (
            None if prefix is None else prefix.replace(keys=keys_values[0], values=keys_values[1])
        )
        logits, _ = model(tokens, jnp.asarray(tokens_mask), prefix=given)
        return (jax.nn.log_softmax(logits)[..., 5] * tokens_mask).sum(), logits

    outputs = {}
    for kind, model in models.items():
        if prefix is None:
            outputs[kind] = (loss(None, model)[1], None)
        else:
            grad_fn = jax.value_and_grad(loss, has_aux=True)
            (_, logits), grad = grad_fn((prefix.keys, prefix.values), model)
            outputs[kind] = (logits, grad)
    (dense, dense_grad), (fused, fused_grad) = outputs["xla"], outputs["flash"]
    real = tokens_mask[..., None]
    np.testing.assert_allclose(np.asarray(fused) * real, np.asarray(dense) * real, atol=1e-5)
    if prefix is not None:
        for a, b in zip(fused_grad, dense_grad, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)
        assert float(jnp.abs(dense_grad[0]).max()) > 1e-4


def test_model_decoding_equals_dense(models, small_flash_blocks):
    """Greedy and beam search (cached steps, prefix in the cache, mixed per-row prefixes)."""
    prompts = [[5, 9, 13, 2, 7, 3, 11], [4, 4, 8], [17, 1, 6, 6, 20, 30, 2, 9, 12, 14]]
    tokens, mask = left_pad(prompts, 0)
    prefix = model_prefix(models["xla"], 7, len(prompts), mixed=True, seed=1)
    results = {
        kind: (
            np.asarray(decode.greedy(m, tokens, mask, max_new_tokens=12, prefix=prefix)),
            np.asarray(
                decode.beam_search(m, tokens, mask, max_new_tokens=8, beam_size=3, prefix=prefix)[0]
            ),
        )
        for kind, m in models.items()
    }
    for a, b in zip(results["flash"], results["xla"], strict=True):
        np.testing.assert_array_equal(a, b)


# --- memory ---------------------------------------------------------------------------------

LONG = ModelConfig(
    family="llama",
    vocab_size=256,
    hidden_size=64,
    num_layers=4,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    intermediate_size=128,
    max_position_embeddings=4096,
    tie_embeddings=False,
)


def test_flash_step_needs_a_third_of_dense_memory():
    """A prefix train step at 2 x 2048 (one CPU device): XLA's own memory analysis."""
    mesh = sharding.make_mesh([("data", 1), ("fsdp", 1), ("tensor", 1)], jax.devices("cpu")[:1])
    from prefix_jax.scale.aot.table import method_config

    temps = {
        kind: aot.compile_train_step(
            LONG, mesh, 2, 2048, method_config("prefix", 10), attention=kind,
            param_dtype=jnp.float32, dtype=jnp.float32,
        ).memory.temporaries
        for kind in ("xla", "auto")
    }  # fmt: skip
    assert temps["auto"] <= temps["xla"] / 3, temps
