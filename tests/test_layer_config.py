"""SparseMoE stores its constructor arguments (SparseMoEConfig) and is rebuilt from them: the
expert-parallel ranks rebuild the caller's layer this way, so no argument may be forgotten."""

from __future__ import annotations

import inspect
import io
from dataclasses import fields

import pytest
import torch

from moe_lab.layer import SparseMoE, SparseMoEConfig
from moe_lab.systems.parallel import _layer_config

# every constructor argument away from its default, so one the config forgets shows up
CUSTOM = dict(d_model=12, d_ff=20, num_experts=6, top_k=3, dispatch="padded",
              capacity_factor=1.5, activation="geglu", normalize=False, noise="jitter",
              router_dtype=torch.float64, scoring="sigmoid", scaling_factor=2.0,
              num_groups=3, topk_groups=2, weight_inputs=True, num_shared_experts=2,
              shared_d_ff=10, gate_shared_experts=True)


def constructor_arguments() -> dict[str, inspect.Parameter]:
    parameters = inspect.signature(SparseMoE.__init__).parameters
    return {name: p for name, p in parameters.items() if name != "self"}


def test_the_config_holds_every_constructor_argument():
    arguments = constructor_arguments()
    assert set(arguments) == {f.name for f in fields(SparseMoEConfig)}
    assert set(arguments) == set(CUSTOM)  # the round trip below covers every argument
    for name, parameter in arguments.items():
        assert parameter.default is inspect.Parameter.empty or CUSTOM[name] != parameter.default


def test_layer_to_config_to_layer_round_trip():
    torch.manual_seed(0)
    moe = SparseMoE(**CUSTOM)
    assert moe.config == SparseMoEConfig(**CUSTOM)
    # the stored config is what the layer built
    assert (moe.router.normalize, moe.router.noise, moe.router.scoring, moe.router.router_dtype,
            moe.experts.activation) == (False, "jitter", "sigmoid", torch.float64, "geglu")
    for config in (moe.config, SparseMoEConfig(**_layer_config(moe))):  # parallel's copy too
        rebuilt = SparseMoE.from_config(config)
        assert rebuilt.config == moe.config
        rebuilt.load_state_dict(moe.state_dict())
        x = torch.randn(7, CUSTOM["d_model"])
        torch.testing.assert_close(rebuilt.eval()(x).y, moe.eval()(x).y, rtol=0, atol=0)
    buffer = io.BytesIO()  # the ranks load it with weights_only=True
    torch.save(_layer_config(moe), buffer)
    buffer.seek(0)
    assert SparseMoEConfig(**torch.load(buffer, weights_only=True)) == moe.config


def test_changed_attributes_follow_into_the_config():
    moe = SparseMoE(8, 16, 4, 2)
    moe.capacity_factor, moe.dispatch = 2.0, "loop"  # as lesson 03 does
    assert (moe.config.capacity_factor, moe.config.dispatch) == (2.0, "loop")
    assert SparseMoE.from_config(moe.config).capacity(10) == moe.capacity(10) == 10
    with pytest.raises(ValueError, match="dispatch"):
        moe.dispatch = "warp"
    with pytest.raises(ValueError, match="capacity_factor"):
        moe.capacity_factor = 0.0
    with pytest.raises(TypeError, match="config"):
        SparseMoE.from_config(moe.config.to_dict())


def test_options_changed_on_the_router_are_validated_and_read_back():
    moe = SparseMoE(8, 16, 4, 2)
    moe.router.normalize, moe.router.scoring, moe.router.scaling_factor = False, "sigmoid", 2.0
    moe.router.router_dtype = None
    moe.top_k = 3
    config = moe.config
    assert (config.normalize, config.scoring, config.scaling_factor, config.router_dtype,
            config.top_k) == (False, "sigmoid", 2.0, None, 3)
    rebuilt = SparseMoE.from_config(config)
    rebuilt.load_state_dict(moe.state_dict())
    x = torch.randn(9, 8)
    torch.testing.assert_close(rebuilt(x).y, moe(x).y, rtol=0, atol=0)
    for name, value, error in [("normalize", "yes", TypeError), ("scoring", "tanh", ValueError),
                               ("scaling_factor", 0.0, ValueError), ("noise", "gauss", ValueError),
                               ("router_dtype", torch.int32, TypeError), ("top_k", 5, ValueError),
                               ("noise", "noisy_topk", ValueError)]:
        with pytest.raises(error, match=name):
            setattr(moe.router, name, value)
    assert moe.config == config  # a refused value changes nothing


@pytest.mark.parametrize("where,name", [("layer", "d_model"), ("layer", "d_ff"),
                                        ("layer", "num_experts"), ("layer", "num_shared_experts"),
                                        ("router", "num_experts"), ("router", "num_groups"),
                                        ("experts", "activation")])
def test_fixed_options_are_refused_by_name(where, name):
    moe = SparseMoE(8, 16, 4, 2)
    target = {"layer": moe, "router": moe.router, "experts": moe.experts}[where]
    with pytest.raises(AttributeError, match=name):
        setattr(target, name, 2)


def test_unknown_options_are_named():
    with pytest.raises(TypeError, match="shared_gate.*the options are"):
        SparseMoE(8, 16, 4, 2, shared_gate=True)
