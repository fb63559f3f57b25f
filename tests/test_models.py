"""Score networks and parameterisations: shapes, the parameter tree checkpoints hold, the time embedding, zero init,
dropout, round trips."""

import hashlib
import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from diffvar.models import MLP, MODELS, UNet, make_model
from diffvar.models.embedding import timestep_embedding
from diffvar.models.param import PARAMETERISATIONS, make_score_fn, output_to_score, score_to_output
from diffvar.models.unet import norm_channels
from diffvar.sde import VESDE, VPSDE, SubVPSDE

# Parameter counts of the PyTorch peer's workloads (the reference models in benchmarks/torch_peer.py), obtained once
# with torch 2.13.0 (CPU) by `sum(p.numel() for p in WORKLOADS[name][0]().parameters())` (the "params" field that
# `python torch_peer.py --workload NAME` prints). Hard-coded so these tests do not need torch.
PEER_PARAMS = {"toy2d": 33794, "digits": 1001729, "mnist": 1539329, "cifar": 35746307}

# The peer's workloads: (module, one example's shape).
WORKLOADS = {
    "toy2d": (MLP(), (2,)),
    "digits": (UNet(ch=32, ch_mult=(1, 2), num_res_blocks=2, attn_resolutions=(4,)), (8, 8, 1)),
    "mnist": (UNet(ch=32, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(16,)), (28, 28, 1)),
    "cifar": (UNet(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,)), (32, 32, 3)),
}


def _init(model, shape, batch=2, seed=0):
    y = jax.random.normal(jax.random.PRNGKey(seed), (batch,) + shape)
    t = jax.random.uniform(jax.random.PRNGKey(seed + 1), (batch,))
    return model.init(jax.random.PRNGKey(seed + 2), y, t), y, t


def _count(tree):
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


# ------------------------------------------------------------------------------------------------ shapes, counts


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_param_count_matches_peer(workload):
    model, shape = WORKLOADS[workload]
    y, t = jnp.zeros((1,) + shape), jnp.zeros((1,))
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), y, t))
    assert _count(params) == PEER_PARAMS[workload]
    out = jax.eval_shape(lambda p: model.apply(p, y, t), params)
    assert out.shape == y.shape


@pytest.mark.parametrize("dim", [2, 16])
@pytest.mark.parametrize("time_embedding", ["concat", "sinusoidal"])
def test_mlp_shapes(dim, time_embedding):
    model = MLP(hidden=32, depth=2, activation="silu", time_embedding=time_embedding)
    params, y, t = _init(model, (dim,), batch=5)
    out = model.apply(params, y, t)
    assert out.shape == (5, dim) and bool(jnp.all(jnp.isfinite(out)))
    extra = 1 if time_embedding == "concat" else 32
    assert _count(params) == (dim + extra) * 32 + 32 + 32 * 32 + 32 + 32 * dim + dim
    # the output depends on t
    assert not np.allclose(out, model.apply(params, y, t + 0.3))


def _tree_digest(params):
    """sha256 (first 16 hex digits) of the sorted [path, shape] pairs of a parameter tree."""
    pairs = sorted(
        ["/".join(str(getattr(k, "key", k)) for k in path), list(leaf.shape)]
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    )
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:16]


# _tree_digest of the workloads' parameter trees as checkpoints written before the models used flax's layers hold
# them (every module name, parameter name and shape); a checkpoint restores only into the same tree.
PARAM_TREES = {"toy2d": "b52166e791d14e73", "digits": "a0209da1eac17039", "mnist": "8422cd1dfe152eaf"}


@pytest.mark.parametrize("workload", sorted(PARAM_TREES))
def test_parameter_tree_is_the_one_existing_checkpoints_hold(workload):
    model, shape = WORKLOADS[workload]
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + shape), jnp.zeros((1,))))
    assert _tree_digest(params) == PARAM_TREES[workload]


def test_timestep_embedding_is_sin_and_cos_of_geometric_frequencies():
    """[sin(t w_k), cos(t w_k)] with w_0 = 1 down to w_{half-1} = 1e-4; an odd dim ends in a zero column."""
    t = jnp.array([0.0, 0.5, 3.0, 1000.0])
    emb = timestep_embedding(t, 8)
    w = 10000.0 ** (-np.arange(4) / 3)
    want = np.concatenate([np.sin(np.outer(t, w)), np.cos(np.outer(t, w))], axis=1)
    np.testing.assert_allclose(emb, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(emb[0], [0, 0, 0, 0, 1, 1, 1, 1])
    odd = timestep_embedding(t, 9)
    assert odd.shape == (4, 9)
    np.testing.assert_array_equal(odd[:, :8], emb)
    np.testing.assert_array_equal(odd[:, 8], 0.0)


def test_mlp_flattens_trailing_dims():
    model = MLP(hidden=16, depth=1, activation="tanh")
    params, y, t = _init(model, (2, 2, 1), batch=3)
    out = model.apply(params, y, t)
    assert out.shape == (3, 2, 2, 1)
    np.testing.assert_allclose(out.reshape(3, 4), model.apply(params, y.reshape(3, 4), t), atol=1e-6)


def test_unet_zero_init():
    """A small U-Net (one resolution, with attention and the middle block): the zero output comes from conv_out."""
    model = UNet(ch=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,))
    y = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 1))
    t = jax.random.uniform(jax.random.PRNGKey(1), (2,))
    params = jax.jit(model.init)(jax.random.PRNGKey(2), y, t)
    apply = jax.jit(model.apply)
    out = apply(params, y, t)
    assert out.shape == y.shape
    assert bool(jnp.all(out == 0.0)), "the zero-initialised final conv must make the initial output exactly 0"
    # every other layer is live: a random final conv gives a nonzero, t-dependent output
    params = _randomise_conv_out(params)
    out = apply(params, y, t)
    assert float(jnp.std(out)) > 1e-3
    assert not np.allclose(out, apply(params, y, t * 0.5))


def test_unet_downsample_shapes_match_torch():
    """Stride-2 conv with padding 1 halves 28 -> 14 -> 7 like torch's Conv2d(3, stride=2, padding=1)."""
    model, shape = WORKLOADS["mnist"]
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + shape), jnp.zeros((1,))))
    p = params["params"]
    # two downsampling convs (Conv_0, Conv_1) then two upsampling convs (Conv_2, Conv_3), each C -> C
    # (tracing the shapes here would fail at a skip concat if 28 -> 14 -> 7 -> 14 -> 28 did not line up)
    assert [p[f"Conv_{i}"]["kernel"].shape for i in range(4)] == [(3, 3, 32, 32)] + [(3, 3, 64, 64)] * 3
    # MNIST never reaches resolution 16, so (as in the peer) the only attention block is the middle one
    assert sorted(k for k in p if k.startswith("AttnBlock")) == ["AttnBlock_0"]


@pytest.mark.parametrize("workload", ["digits", "mnist", "cifar"])
def test_norm_channels_lists_every_group_norm(workload):
    model, shape = WORKLOADS[workload]
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + shape), jnp.zeros((1,))))
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    sizes = {
        leaf.shape[0]
        for path, leaf in flat
        if "GroupNorm" in jax.tree_util.keystr(path) and jax.tree_util.keystr(path).endswith("['scale']")
    }
    assert sizes == set(norm_channels(model.ch, model.ch_mult, model.num_res_blocks))


def _randomise_conv_out(params):
    k = params["params"]["conv_out"]["kernel"]
    out = jax.tree.map(lambda x: x, params)
    out["params"]["conv_out"]["kernel"] = jax.random.normal(jax.random.PRNGKey(42), k.shape) * 0.1
    return out


def _random_params(model, y, t):
    """Random parameters without running init (cheap): normal draws in the shapes init would give."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), y, t))
    leaves, tree = jax.tree.flatten(shapes)
    rng = np.random.default_rng(0)
    scale = lambda shape: 1.0 / math.sqrt(math.prod(shape[:-1])) if len(shape) > 1 else 0.1  # fan-in
    return jax.tree.unflatten(
        tree, [jnp.asarray(rng.normal(size=leaf.shape) * scale(leaf.shape), jnp.float32) for leaf in leaves]
    )


def test_unet_dropout_only_in_train():
    model = UNet(ch=16, ch_mult=(1, 1), num_res_blocks=1, attn_resolutions=(4,), dropout=0.5)
    y = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 1))
    t = jnp.array([0.3, 0.7])
    params = _random_params(model, y, t)
    apply = jax.jit(model.apply, static_argnames="train")
    ev1 = apply(params, y, t)  # no 'dropout' rng needed when train=False
    ev2 = apply(params, y, t, train=False)
    np.testing.assert_array_equal(ev1, ev2)
    tr1 = apply(params, y, t, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    tr1b = apply(params, y, t, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    tr2 = apply(params, y, t, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
    np.testing.assert_array_equal(tr1, tr1b)
    assert not np.allclose(tr1, ev1) and not np.allclose(tr1, tr2)
    # rate 0: train and eval agree
    model0 = model.clone(dropout=0.0)
    tr0 = jax.jit(model0.apply, static_argnames="train")(
        params, y, t, train=True, rngs={"dropout": jax.random.PRNGKey(1)}
    )
    np.testing.assert_allclose(tr0, ev1, atol=1e-6)


# ------------------------------------------------------------------------------------------------ parameterisation

SDES = [VPSDE(), SubVPSDE(), VESDE()]


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("kind", PARAMETERISATIONS)
@pytest.mark.parametrize("shape", [(4,), (2, 3, 1)])
def test_parameterisation_round_trip(sde, kind, shape):
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    t = jax.random.uniform(k1, (6,), minval=0.01, maxval=sde.T)
    s = jax.random.normal(k2, (6,) + shape)
    out = score_to_output(s, t, sde, kind)
    assert out.shape == s.shape
    np.testing.assert_allclose(output_to_score(out, t, sde, kind), s, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(score_to_output(output_to_score(s, t, sde, kind), t, sde, kind), s, rtol=1e-5, atol=1e-6)


def test_parameterisation_against_gaussian():
    """x ~ N(0, I) under VP stays N(0, I): score -y, drift a = -g y, eps = sigma y (eps = (y - alpha x) / sigma)."""
    sde = VPSDE()
    k1, k2 = jax.random.split(jax.random.PRNGKey(3))
    t = jax.random.uniform(k1, (5,), minval=0.01, maxval=1.0)
    y = jax.random.normal(k2, (5, 3))
    g = sde.diffusion(t)[:, None]
    alpha, sigma = (v[:, None] for v in sde.alpha_sigma(t))
    np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, atol=1e-6)
    expected = {"score": -y, "drift": -g * y, "eps": sigma * y}
    for kind, out in expected.items():
        np.testing.assert_allclose(score_to_output(-y, t, sde, kind), out, rtol=1e-5, atol=1e-6)
        score_fn = make_score_fn(lambda params, yy, tt, o=out: o * params, sde, kind)
        np.testing.assert_allclose(score_fn(1.0, y, t), -y, rtol=1e-5, atol=1e-6)
    # DSM target: the conditional score of y = alpha x + sigma eps is -eps / sigma
    x = jax.random.normal(jax.random.PRNGKey(4), (5, 3))
    eps = (y - alpha * x) / sigma
    np.testing.assert_allclose(output_to_score(eps, t, sde, "eps"), -(y - alpha * x) / sigma**2, rtol=1e-4)
    # VE: x ~ N(0, I) has marginal N(0, (1 + sigma^2) I)
    ve = VESDE()
    s_ve = -y / (1.0 + ve.alpha_sigma(t)[1][:, None] ** 2)
    np.testing.assert_allclose(
        output_to_score(score_to_output(s_ve, t, ve, "drift") / ve.diffusion(t)[:, None], t, ve, "score"),
        s_ve,
        rtol=1e-5,
    )


def test_unknown_parameterisation():
    for fn in (
        lambda: output_to_score(jnp.ones((1, 2)), jnp.ones(1), VPSDE(), "v"),
        lambda: score_to_output(jnp.ones((1, 2)), jnp.ones(1), VPSDE(), "v"),
        lambda: make_score_fn(lambda p, y, t: y, VPSDE(), "v"),
    ):
        with pytest.raises(ValueError, match="parameterization.*drift.*score.*eps"):
            fn()


# ------------------------------------------------------------------------------------------------ make_model


def test_make_model_builds_and_defaults():
    assert MODELS == ("mlp", "unet")
    m = make_model(ml_collections.ConfigDict({"name": "mlp", "hidden": 64}), (2,))
    assert isinstance(m, MLP) and m.hidden == 64 and m.depth == 3 and m.activation == "softplus"
    cfg = ml_collections.ConfigDict(
        dict(
            name="unet",
            ch=32,
            ch_mult=[1, 2, 2],
            num_res_blocks=2,
            attn_resolutions=[16],
            dropout=0.1,
            time_scale=1000.0,
        )
    )
    u = make_model(cfg, (28, 28, 1))
    assert isinstance(u, UNet) and u.ch_mult == (1, 2, 2) and u.attn_resolutions == (16,)
    u2 = make_model(ml_collections.ConfigDict({"name": "unet"}), (32, 32, 3))
    assert u2 == UNet()


@pytest.mark.parametrize(
    "cfg,shape,match",
    [
        ({"name": "resnet"}, (2,), r"model\.name.*mlp.*unet"),
        ({"name": "unet"}, (2,), r"unet.*\(H, W, C\)"),
        ({"name": "unet", "ch_mult": (1, 2, 2, 2)}, (28, 28, 1), r"model\.ch_mult.*8"),
        ({"name": "unet", "ch_mult": (1, 2)}, (9, 9, 1), r"model\.ch_mult"),
        ({"name": "unet", "ch": 48}, (32, 32, 3), r"model\.ch\b"),
        ({"name": "unet", "ch": 16, "ch_mult": (1, 2)}, (8, 8, 1), r"model\.ch\b.*48"),
        ({"name": "unet", "dropout": 1.0}, (32, 32, 3), r"model\.dropout"),
        ({"name": "mlp", "activation": "gelu"}, (2,), r"model\.activation"),
        ({"name": "mlp", "time_embedding": "fourier"}, (2,), r"model\.time_embedding"),
    ],
)
def test_make_model_errors(cfg, shape, match):
    with pytest.raises(ValueError, match=match):
        make_model(ml_collections.ConfigDict(cfg), shape)
