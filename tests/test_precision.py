"""model.dtype = 'bfloat16': the network computes in bf16, everything else stays float32 (models/unet.py).

The tolerance, derived before measuring. bf16 keeps 8 significant bits: round-to-nearest has a relative error of
at most u = 2^-8 (about 2.4 decimal digits). Each Conv / Dense layer rounds its input and its weights to bf16 (its
accumulation and the norms' statistics are float32), so L layers make 2L roundings of relative size <= u; to
first order and independent between layers they add in quadrature, and the network's output is off by a relative
eps = sqrt(2 L) u. L is the number of kernels in the network (at least the longest path through it).

The ELBO's network part N = ELBO(network) - ELBO(a = 0) on the same draws is -int |a|^2 / 2 + g div a: a relative
eps in a moves |a|^2 / 2 by 2 eps and g div a by eps, so |mean over the batch of ELBO_bf16 - ELBO_fp32| <= 2 eps
mean|N|. The rest of the ELBO (the prior, div f, the bpd accounting) is the SDE's and float32 in both.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffvar import experiment
from diffvar.elbo import ElboOptions
from diffvar.errors import ConfigError
from tests.helpers import load_config

U = 2.0**-8  # bf16's unit roundoff


def _experiments(name):
    """(fp32 Experiment, bf16 Experiment) of configs/<name>.py; the digits U-Net shrunk to one level of one
    ResBlock at 8 channels (every kind of layer, a few seconds to compile)."""
    c = load_config(name)
    c.model.ch, c.model.ch_mult, c.model.num_res_blocks = 8, (1,), 1
    exp32 = experiment.build(c)
    c.model.dtype = "bfloat16"
    return exp32, experiment.build(c)


def _random_params(exp):
    """Random parameters of the network's shapes (its own init is slow to compile, and the U-Net's zero output
    conv would hide every error): kernels N(0, 1 / fan_in), norm scales 1 + N(0, 0.01), biases N(0, 0.01)."""
    shapes = jax.eval_shape(lambda: experiment.init_state(exp, 0).params)
    paths, tree = jax.tree_util.tree_flatten_with_path(shapes)
    keys = jax.random.split(jax.random.PRNGKey(1), len(paths))
    out = []
    for (path, a), k in zip(paths, keys):
        z, name = jax.random.normal(k, a.shape), str(path[-1])
        out.append(
            z / math.sqrt(math.prod(a.shape[:-1]))
            if "kernel" in name
            else 1.0 + 0.1 * z
            if "scale" in name
            else 0.1 * z
        )
    return jax.tree_util.tree_unflatten(tree, out)


def _data(exp, n=16):
    """n fixed examples of the workload's kind: integer levels for images, standard normals for toys."""
    shape, levels = (n,) + exp.info.shape, exp.info.levels
    if levels:
        return jax.random.randint(jax.random.PRNGKey(2), shape, 0, levels).astype(jnp.float32)
    return jax.random.normal(jax.random.PRNGKey(2), shape)


@pytest.mark.parametrize("name", ["digits", "gmm2d"])
def test_bf16_network_elbo_equals_fp32_elbo_within_bf16_rounding(name):
    exp32, exp16 = _experiments(name)
    params = _random_params(exp32)
    num_layers = sum(1 for path, _ in jax.tree_util.tree_leaves_with_path(params) if "kernel" in str(path[-1]))
    eps = math.sqrt(2 * num_layers) * U

    x = _data(exp32)
    y, _ = exp32.to_model_space(jax.random.PRNGKey(4), x)
    t = jnp.linspace(0.01, 0.99, x.shape[0])
    out32, out16 = (jax.jit(e.apply)(params, y, t) for e in (exp32, exp16))
    assert out16.dtype == jnp.float32  # cast back at the network's edge: the ELBO's arithmetic sees float32
    rel = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
    assert 0 < rel <= eps, (rel, eps)  # nonzero: the policy is not silently a no-op

    key = jax.random.PRNGKey(3)
    elbo32 = experiment.make_elbo_fn(exp32, ElboOptions(draws=1))(params, x, key)
    elbo16 = experiment.make_elbo_fn(exp16, ElboOptions(draws=1))(params, x, key)
    zero = experiment.make_elbo_fn(exp32, ElboOptions(draws=1), score=lambda p: lambda y, t: jnp.zeros_like(y))(
        params, x, key
    )
    network_part = float(jnp.mean(jnp.abs(elbo32 - zero)))
    assert elbo16.dtype == jnp.float32
    assert not np.array_equal(np.asarray(elbo16), np.asarray(elbo32))
    assert abs(float(jnp.mean(elbo16 - elbo32))) <= 2 * eps * network_part, (elbo16 - elbo32, eps, network_part)


def test_bf16_params_and_optimizer_state_stay_float32():
    _, exp16 = _experiments("gmm2d")
    state = experiment.init_state(exp16, 0)
    x = jax.random.normal(jax.random.PRNGKey(0), (1, exp16.config.training.batch_size) + exp16.info.shape)
    state, losses = experiment.make_train_step(exp16)(state, x)
    assert np.isfinite(np.asarray(losses)).all()
    for part in (state.params, state.ema_params, state.opt_state):
        floats = [a.dtype for a in jax.tree.leaves(part) if jnp.issubdtype(a.dtype, jnp.floating)]
        assert floats and all(d == jnp.float32 for d in floats), floats
    _, unet16 = _experiments("digits")  # the U-Net's parameters too (shapes only: nothing is computed)
    shapes = jax.eval_shape(lambda: experiment.init_state(unet16, 0).params)
    assert {a.dtype for a in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}


def test_model_dtype_outside_the_policy_is_one_clear_error():
    c = load_config("gmm2d")
    c.model.dtype = "float16"
    with pytest.raises(ConfigError, match=r"model\.dtype='float16' is not allowed; choose one of float32, bfloat16"):
        experiment.build(c)
