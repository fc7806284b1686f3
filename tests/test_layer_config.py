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
              capacity_factor=1.5, activation="gelu", normalize=False, noise="jitter",
              router_dtype=torch.float64, scoring="sigmoid", router_bias=True, scaling_factor=2.0,
              num_groups=3, topk_groups=2, expert_bias=True, weight_inputs=True, swiglu_alpha=1.5,
              swiglu_limit=3.0, num_shared_experts=2, shared_d_ff=10, shared_gate=True)


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
            moe.experts.activation) == (False, "jitter", "sigmoid", torch.float64, "gelu")
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
