"""The one way a text is routed (moe_lab.lm.text_routing): bytes -> a routing callable -> one table,
and the adapters built on it (the toy byte router of the lesson 01-02 widgets)."""

from __future__ import annotations

import pytest
import torch
from plain_references import fixed_layers

from moe_lab import RouterOutput
from moe_lab.lm.text_routing import TextRouting, route_bytes
from moe_lab.widgets._toy import ToyByteRouter


def test_route_text_stacks_every_layer():
    probs = torch.tensor([[[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]],
                          [[0.2, 0.5, 0.3], [0.4, 0.4, 0.2]]])  # (L=2, T=2, E=3)
    calls = []
    routing = route_bytes("ab€", fixed_layers(probs, 2, calls), max_tokens=2,
                         layer_names=["first", "second"])
    assert isinstance(routing, TextRouting)
    assert calls[0].tolist() == [97, 98] and calls[0].dtype == torch.long  # the first 2 bytes
    assert routing.labels == ["a", "b"] and routing.layer_names == ("first", "second")
    assert (routing.num_layers, routing.num_tokens, routing.top_k) == (2, 2, 2)
    assert routing.num_experts == 3 and routing.total_tokens == 5 and routing.truncated  # € = 3
    assert routing.topk_idx.tolist() == [[[0, 1], [2, 1]], [[1, 2], [0, 1]]]
    torch.testing.assert_close(routing.topk_weights[0, 0], torch.tensor([2 / 3, 1 / 3]))
    torch.testing.assert_close(routing.router_probs, probs)
    # tokens_per_expert[l, e] = #{(t, k) : topk_idx[l, t, k] = e}
    assert routing.tokens_per_expert.tolist() == [[1, 2, 1], [1, 2, 1]]
    as_dict = routing.to_dict()
    assert as_dict["topk_idx"] == routing.topk_idx.tolist() and as_dict["total_tokens"] == 5
    assert as_dict["router_probs"][1][0] == pytest.approx([0.2, 0.5, 0.3])
    assert as_dict["layer_names"] == ["first", "second"] and as_dict["labels"] == ["a", "b"]


@pytest.mark.parametrize("text", ["", "\ud800", "🙂", "a\nb"])
def test_route_text_on_odd_text(text):
    probs = torch.softmax(torch.randn(1, 8, 4, generator=torch.Generator().manual_seed(0)), -1)
    calls = []
    routing = route_bytes(text, fixed_layers(probs, 1, calls), max_tokens=8)
    num_bytes = len(text.encode("utf-8", "replace"))
    assert routing.num_tokens == len(routing.labels) == num_bytes == routing.total_tokens
    assert routing.topk_idx.shape == (1, num_bytes, 1)
    assert routing.router_probs.shape == (1, num_bytes, 4)  # E is known even for T = 0
    assert len(calls[0]) == num_bytes  # the empty text is routed too (T = 0)
    assert int(routing.tokens_per_expert.sum()) == num_bytes


def test_route_text_rejects_bad_input():
    probs = torch.softmax(torch.randn(2, 4, 3), -1)
    good = fixed_layers(probs, 1)
    with pytest.raises(TypeError, match="text"):
        route_bytes(None, good, max_tokens=4)
    with pytest.raises(TypeError, match="route_ids"):
        route_bytes("ab", "not callable", max_tokens=4)
    with pytest.raises(ValueError, match="max_tokens"):
        route_bytes("ab", good, max_tokens=0)
    with pytest.raises(TypeError, match="route_ids"):
        route_bytes("ab", lambda ids: [], max_tokens=4)
    with pytest.raises(TypeError, match="RouterOutput"):
        route_bytes("ab", lambda ids: [{"probs": probs[0]}], max_tokens=4)
    with pytest.raises(ValueError, match="T=2"):  # outputs over the wrong number of tokens
        route_bytes("ab", lambda ids: good(torch.zeros(3, dtype=torch.long)), max_tokens=4)
    one = good(torch.zeros(2, dtype=torch.long))[0]
    with pytest.raises(ValueError, match="topk_idx"):
        route_bytes("ab", lambda ids: [RouterOutput(one.logits, one.probs, one.topk_idx + 3,
                                                   one.topk_weights)], max_tokens=4)
    with pytest.raises(ValueError, match="layer 1"):  # another E in the second layer
        route_bytes("ab", lambda ids: [one, RouterOutput(one.logits[:, :2], one.probs[:, :2],
                                                        one.topk_idx, one.topk_weights)],
                   max_tokens=4)
    with pytest.raises(ValueError, match="layer_names"):
        route_bytes("ab", good, max_tokens=4, layer_names=["only one"])


@pytest.mark.parametrize("noise", [None, "noisy_topk", "jitter"])
def test_toy_router_is_the_router_and_leaves_the_random_state_alone(noise):
    toy = ToyByteRouter(d_model=8, num_experts=4, seed=3)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    routing = toy.route("hello", 2, noise=noise, max_tokens=4)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert routing.labels == list("hell") and routing.total_tokens == 5
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(3)
        expected = toy.router(2, noise=noise)(toy.embedding[torch.tensor(list(b"hell"))])
    assert torch.equal(routing.topk_idx[0], expected.topk_idx)
    torch.testing.assert_close(routing.router_probs[0], expected.probs)
    again = toy.route("hello", 2, noise=noise, max_tokens=4)  # seeded: the same picture
    assert torch.equal(again.router_probs, routing.router_probs)
