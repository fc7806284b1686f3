"""Property tests (hypothesis) over random shapes: every strategy equals the dense reference,
and capacity bookkeeping holds."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moe_lab import SparseMoE


@st.composite
def layer_configs(draw):
    num_experts = draw(st.integers(1, 12))
    return dict(
        n=draw(st.integers(0, 40)),
        d=draw(st.integers(1, 12)),
        f=draw(st.integers(1, 12)),
        e=num_experts,
        k=draw(st.integers(1, num_experts)),
        activation=draw(st.sampled_from(["swiglu", "gelu", "relu"])),
        cf=draw(st.one_of(st.none(), st.floats(0.1, 3.0))),
        normalize=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


@settings(max_examples=60, deadline=None)
@given(cfg=layer_configs(), strategy=st.sampled_from(["loop", "sorted", "padded"]))
def test_any_shape_matches_dense(cfg, strategy):
    layers = {}
    for name in ("dense", strategy):
        torch.manual_seed(cfg["seed"])
        layers[name] = SparseMoE(cfg["d"], cfg["f"], cfg["e"], cfg["k"], dispatch=name,
                                 activation=cfg["activation"], capacity_factor=cfg["cf"],
                                 normalize=cfg["normalize"])
    x = torch.randn(cfg["n"], cfg["d"], generator=torch.Generator().manual_seed(cfg["seed"]))
    ref, out = layers["dense"](x), layers[strategy](x)
    torch.testing.assert_close(out.y, ref.y, atol=1e-5, rtol=1e-4)
    assert torch.equal(out.dropped, ref.dropped)
    n_assign = cfg["n"] * cfg["k"]
    assert out.tokens_per_expert.sum().item() + out.dropped.sum().item() == n_assign
    capacity = layers[strategy].capacity(cfg["n"])
    if capacity is not None:
        assert out.tokens_per_expert.max().item() <= capacity
    else:
        assert not out.dropped.any()
