"""The PyTorch peer (benchmarks/torch_peer.py) computes diffvar's U-Net function: its weights, copied in by
benchmarks/quality.py's peer_params, give diffvar's U-Net (time_scale 1, as the peer embeds t) the peer's output.
This is what lets benchmarks/quality.py evaluate the peer's trained model with diffvar's own estimator."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffvar.models import make_model
from tests.helpers import load_benchmark, load_config

torch = pytest.importorskip("torch", reason="the bench extra (pip install -e '.[bench]') provides torch")
quality, torch_peer = load_benchmark("quality"), load_benchmark("torch_peer")


@pytest.mark.parametrize("workload,config,shape", [("digits", "digits", (8, 8, 1)), ("mnist", "mnist", (28, 28, 1))])
def test_peer_weights_copied_into_diffvar_unet_give_the_peers_output(workload, config, shape):
    torch.manual_seed(0)
    peer = torch_peer.WORKLOADS[workload][0]()
    with torch.no_grad():  # torch initialises GroupNorm to (1, 0): make every parameter matter
        for p in peer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    cfg = load_config(config).model
    cfg.time_scale = 1.0
    model = make_model(cfg, shape)
    params = quality.peer_params({k: v.numpy() for k, v in peer.state_dict().items()}, model, shape)
    template = model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + shape), jnp.ones((1,)))["params"]
    assert jax.tree.structure(params) == jax.tree.structure(template)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3,) + shape).astype(np.float32)
    t = np.array([0.01, 0.4, 0.97], np.float32)
    with torch.no_grad():
        want = peer(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(t)).permute(0, 2, 3, 1).numpy()
    got = np.asarray(model.apply({"params": params}, jnp.asarray(x), jnp.asarray(t)))
    scale = np.abs(want).max()
    assert scale > 0.1
    np.testing.assert_allclose(got, want, atol=1e-5 * scale, rtol=0)


def test_peer_params_refuses_weights_of_another_network():
    cfg = load_config("digits").model
    mnist_peer = torch_peer.WORKLOADS["mnist"][0]()
    with pytest.raises(ValueError, match="modules"):
        quality.peer_params(
            {k: v.numpy() for k, v in mnist_peer.state_dict().items()}, make_model(cfg, (8, 8, 1)), (8, 8, 1)
        )


def test_peer_amp_bf16_runs_the_network_in_bf16_and_the_sums_in_float32():
    model = torch_peer.WORKLOADS["toy2d"][0]()
    x = torch.randn(64, 2)
    for fn in (torch_peer.dsm_loss, torch_peer.elbo_ism):
        torch.manual_seed(1)
        want = fn(model, x)
        torch.manual_seed(1)
        got = fn(model, x, "bf16")
        assert got.dtype == torch.float32 and torch.isfinite(got).all()
        assert not torch.equal(got, want)  # autocast took effect
