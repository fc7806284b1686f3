"""moe_lab.inference: the distinct-experts formula against simulation, the cache simulator against
a plain reference and hand-made traces, KV-cache decoding against a full forward pass, replay,
batch dependence, the cost model, and refusal of bad input."""

from __future__ import annotations

import pytest
import torch

from moe_lab import expected_distinct_experts, simulate_expert_cache
from moe_lab.inference.batching import batch_dependence
from moe_lab.inference.cache import cooccurrence, prefetch_hits, static_cache_hits
from moe_lab.inference.decode import KVCache, forward_step, generate, moe_forward, sample_tokens
from moe_lab.inference.replay import expert_sets_differ, route_in
from moe_lab.inference.timing import LayerShape, Spread, time_layers, timing_findings
from moe_lab.inference.traffic import (
    expected_distinct_from_probs,
    moe_step_cost,
    offload_tokens_per_second,
    roofline_seconds,
    token_probs_from_counts,
)
from moe_lab.layer import SparseMoE
from moe_lab.lm.model import ModelConfig, TinyLM

# ------------------------------------------------------------------ the formula


@pytest.mark.parametrize("num_experts, top_k, num_tokens", [(8, 2, 1), (8, 2, 5), (16, 4, 8),
                                                             (64, 8, 16), (32, 1, 40)])
def test_formula_matches_simulation_over_many_seeds(num_experts, top_k, num_tokens):
    generator = torch.Generator().manual_seed(num_experts * 100 + num_tokens)
    seeds = 4000
    scores = torch.rand(seeds, num_tokens, num_experts, generator=generator)
    picks = scores.argsort(-1)[..., :top_k]  # (S, B, K): K distinct experts per token, uniform
    touched = torch.zeros(seeds, num_experts, dtype=torch.bool)
    touched.scatter_(1, picks.reshape(seeds, -1), True)
    counts = touched.sum(1).double()  # (S,)
    error = counts.std().item() / seeds ** 0.5
    formula = expected_distinct_experts(num_experts, top_k, num_tokens)
    assert abs(counts.mean().item() - formula) < 4 * error + 1e-12


def test_formula_at_known_points():
    assert expected_distinct_experts(8, 2, 0) == 0.0
    assert expected_distinct_experts(8, 2, 1) == pytest.approx(2.0)
    assert expected_distinct_experts(8, 8, 5) == pytest.approx(8.0)
    assert expected_distinct_experts(64, 8, 10_000) == pytest.approx(64.0)
    assert expected_distinct_experts(8, 2, 2) == pytest.approx(8 * (1 - 0.75 ** 2))
    uniform = torch.full((8,), 2 / 8, dtype=torch.float64)
    assert expected_distinct_from_probs(uniform, 7) == pytest.approx(expected_distinct_experts(8, 2, 7))
    skewed = torch.tensor([1.0, 1.0, 0, 0], dtype=torch.float64)  # always experts 0 and 1
    assert expected_distinct_from_probs(skewed, 50) == pytest.approx(2.0)
    p = token_probs_from_counts(torch.tensor([6, 2, 0, 4]), 2)  # 6 tokens, K = 2
    assert p.tolist() == pytest.approx([1.0, 1 / 3, 0.0, 2 / 3]) and p.sum().item() == pytest.approx(2)


@pytest.mark.parametrize("args, error", [((8, 0, 4), ValueError), ((8, 9, 4), ValueError),
                                         ((8, 2, -1), ValueError), ((0, 1, 4), ValueError),
                                         ((8, 2.0, 4), TypeError), ((8, 2, "4"), TypeError),
                                         ((8, 2, float("nan")), ValueError)])
def test_formula_refuses_bad_input_by_name(args, error):
    with pytest.raises(error, match="top_k|num_tokens|num_experts"):
        expected_distinct_experts(*args)


# ------------------------------------------------------------------ the cache simulator


def plain_cache(trace: torch.Tensor, cache_size: int, policy: str) -> tuple[int, int]:
    """A plain reference: a list of resident experts with their last-use time and use count."""
    resident: list[int] = []
    last_use: dict[int, int] = {}
    uses: dict[int, int] = {}
    hits = misses = clock = 0
    for token in trace.tolist():
        for expert in token:
            clock += 1
            uses[expert] = uses.get(expert, 0) + 1
            if expert in resident:
                hits += 1
            else:
                misses += 1
                if len(resident) == cache_size:
                    spare = [e for e in resident if e not in token]
                    if policy == "lru":
                        victim = min(spare, key=lambda e: last_use[e])
                    else:
                        victim = min(spare, key=lambda e: (uses[e], last_use[e]))
                    resident.remove(victim)
                resident.append(expert)
            last_use[expert] = clock
    return hits, misses


@pytest.mark.parametrize("policy", ["lru", "lfu"])
@pytest.mark.parametrize("seed", range(12))
def test_cache_matches_a_plain_reference_on_random_traces(policy, seed):
    generator = torch.Generator().manual_seed(seed)
    num_experts = int(torch.randint(3, 20, (1,), generator=generator))
    top_k = int(torch.randint(1, min(num_experts, 5) + 1, (1,), generator=generator))
    cache_size = int(torch.randint(top_k, num_experts + 2, (1,), generator=generator))
    skew = torch.linspace(0, 2, num_experts)
    scores = torch.rand(60, num_experts, generator=generator) + skew * (seed % 2)
    trace = torch.topk(scores, top_k, dim=-1).indices  # (T, K), skewed on odd seeds
    result = simulate_expert_cache(trace, cache_size, policy)
    assert (result.hits, result.misses) == plain_cache(trace, cache_size, policy)
    assert result.lookups == trace.numel() and 0 <= result.hit_rate <= 1


@pytest.mark.parametrize("trace, cache_size, policy, hits, misses", [
    ([[0, 1], [2, 3], [4, 5]], 2, "lru", 0, 6),            # every expert new
    ([[0, 1], [0, 1], [0, 1]], 2, "lru", 4, 2),            # only the cold misses
    ([[0, 1], [2, 0]], 2, "lru", 1, 3),                    # 0 is oldest but the token needs it
    ([[0], [1], [0], [2], [1]], 2, "lru", 1, 4),           # 2 evicts 1 (0 was refreshed)
    ([[0], [1], [0], [2], [1]], 2, "lfu", 1, 4),           # 2 evicts 1 (used once)
    ([[0], [0], [1], [2], [0]], 2, "lfu", 2, 3),           # LFU keeps 0 (used twice)
    ([[0], [0], [1], [1], [2], [0]], 2, "lfu", 2, 4),      # tie (0 and 1 twice): the older, 0, goes
    ([[0], [1], [2]], 5, "lru", 0, 3),                     # a cache larger than E
])
def test_cache_exact_counts_on_hand_made_traces(trace, cache_size, policy, hits, misses):
    result = simulate_expert_cache(torch.tensor(trace), cache_size, policy)
    assert (result.hits, result.misses) == (hits, misses)


def test_cache_of_an_empty_trace_has_no_lookups():
    result = simulate_expert_cache(torch.empty(0, 2, dtype=torch.long), 2)
    assert (result.hits, result.misses, result.hit_rate) == (0, 0, 0.0)


@pytest.mark.parametrize("trace, cache_size, policy, error, words", [
    (torch.tensor([[0.0, 1.0]]), 2, "lru", TypeError, "integer"),
    ([[0, 1]], 2, "lru", TypeError, "trace"),
    (torch.tensor([[0, 1]]), 1, "lru", ValueError, "cache_size"),
    (torch.tensor([[0, 1]]), 2, "fifo", ValueError, "policy"),
    (torch.tensor([[0, -1]]), 2, "lru", ValueError, "negative"),
    (torch.tensor([0, 1]), 2, "lru", ValueError, r"\(T, K\)"),
    (torch.tensor([[0, 1]]), 2.0, "lru", TypeError, "cache_size"),
    (torch.tensor([[True, False]]), 2, "lru", TypeError, "integer"),
])
def test_cache_refuses_bad_input_by_name(trace, cache_size, policy, error, words):
    with pytest.raises(error, match=words):
        simulate_expert_cache(trace, cache_size, policy)


def test_static_cache_and_prefetch():
    trace = torch.tensor([[0, 1], [0, 2], [0, 1], [3, 0]])
    assert static_cache_hits(trace, 1).hits == 4  # expert 0: four lookups
    assert static_cache_hits(trace, 2).hits == 6  # 0 and 1
    assert static_cache_hits(trace, 2, torch.tensor([0, 0, 5, 9])).hits == 2  # 3 and 2
    previous = torch.tensor([[0], [1], [0], [1]])
    current = torch.tensor([[2], [3], [2], [3]])
    table = cooccurrence(previous, current, 4)
    assert table[0, 2] == 2 and table[1, 3] == 2 and table.sum() == 4
    assert prefetch_hits(previous, current, table, 1).hit_rate == 1.0


# ------------------------------------------------------------------ decoding and replay


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return TinyLM(ModelConfig(d_model=32, n_layers=2, n_heads=4, d_ff=32, num_experts=4, top_k=2,
                              max_seq_len=24)).eval()


def test_kv_cache_decoding_equals_the_full_forward_pass(tiny_model):
    prompts = torch.randint(0, 256, (3, 5), generator=torch.Generator().manual_seed(1))
    decoded = generate(tiny_model, prompts, 10, generator=torch.Generator().manual_seed(2))
    assert decoded.tokens.shape == (3, 15) and decoded.trace.shape == (2, 3, 14, 2)
    assert decoded.tokens_per_pass == (15,) + (3,) * 9
    full = tiny_model(decoded.tokens[:, :-1])
    cache = KVCache.empty(2)  # token by token through the cache: the same logits
    steps = [forward_step(tiny_model, decoded.tokens[:, t:t + 1], cache).logits
             for t in range(14)]
    assert torch.allclose(torch.cat(steps, dim=1), full.logits, atol=1e-5)
    for layer in range(2):
        assert torch.equal(full.routing[layer].topk_idx.view(3, 14, 2), decoded.trace[layer])


def test_greedy_decoding_is_deterministic_and_bad_input_is_refused(tiny_model):
    prompts = torch.zeros(1, 3, dtype=torch.long)
    a = generate(tiny_model, prompts, 4, temperature=0)
    assert torch.equal(a.tokens, generate(tiny_model, prompts, 4, temperature=0).tokens)
    with pytest.raises(TypeError, match="prompt_ids"):
        generate(tiny_model, prompts.float(), 4)
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(tiny_model, prompts, 30)
    with pytest.raises(ValueError, match="temperature"):
        generate(tiny_model, prompts, 2, temperature=-1.0)


def _sample_reference(probs: torch.Tensor, u: torch.Tensor) -> list[int]:
    """The inverse-CDF rule, one row at a time in plain Python."""
    tokens = []
    for row, draw in zip(probs.double().tolist(), u.flatten().tolist()):
        total, running = sum(row), 0.0
        for v, p in enumerate(row):
            running += p
            if running > draw * total:
                tokens.append(v)
                break
    return tokens


def test_sampled_tokens_follow_the_inverse_cdf_rule_and_the_probabilities():
    probs = torch.tensor([[0.5, 0.0, 0.25, 0.25, 0.0],
                          [0.0, 0.0, 0.0, 0.0, 1.0],
                          [0.1, 0.2, 0.3, 0.4, 0.0]]).repeat(4000, 1)  # (12000, 5)
    drawn = sample_tokens(probs, torch.Generator().manual_seed(3))  # (12000, 1)
    u = torch.rand(probs.shape[0], 1, generator=torch.Generator().manual_seed(3),
                   dtype=torch.float64)
    assert drawn.shape == (12000, 1) and drawn.dtype == torch.long
    assert drawn.flatten().tolist() == _sample_reference(probs, u)
    # a token of probability 0 is never drawn; the frequencies are the probabilities
    assert (probs.gather(1, drawn) > 0).all()
    for row in range(3):
        counts = torch.bincount(drawn[row::3].flatten(), minlength=5).double() / 4000
        p = probs[row].double()
        assert ((counts - p).abs() <= 4 * (p * (1 - p) / 4000).sqrt() + 1e-12).all(), (row, counts)


def test_sampling_rests_on_a_stream_that_every_torch_draws_alike():
    # The claim of sample_tokens: torch.rand's CPU float64 stream from a seed is the same in
    # every torch this course runs on (checked under 2.4.1, 2.9.1, 2.13.0 and 2.14.1), unlike
    # torch.multinomial's; these are its first draws from seed 0.
    u = torch.rand(4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert u.tolist() == [0.9700530018065531, 0.707819864399788, 0.45938294312745087,
                          0.9207476841219603]


def test_sampled_decoding_refuses_a_generator_it_cannot_use(tiny_model):
    prompts = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(TypeError, match="generator"):
        generate(tiny_model, prompts, 2, generator=0)
    if torch.cuda.is_available():  # a CUDA generator: the tokens are drawn on the CPU
        with pytest.raises(TypeError, match="generator"):
            generate(tiny_model, prompts, 2, generator=torch.Generator(device="cuda"))
    a = generate(tiny_model, prompts, 4, generator=torch.Generator().manual_seed(5))
    b = generate(tiny_model, prompts, 4, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.trace, b.trace)


def test_replay_uses_the_given_experts_and_keeps_gradients():
    torch.manual_seed(0)
    layer = SparseMoE(16, 32, 6, 2)
    x = torch.randn(10, 16)
    own, routing = moe_forward(layer, x)
    assert torch.allclose(own, layer(x).y, atol=1e-6)  # no replay: the layer's own pass
    again, _ = moe_forward(layer, x, replay_idx=routing.topk_idx)  # replaying itself: the same
    assert torch.allclose(again, own, atol=1e-6)
    other = (routing.topk_idx + 1) % 6
    y, replayed = moe_forward(layer, x, replay_idx=other)
    assert torch.equal(replayed.topk_idx, other)
    assert torch.allclose(replayed.topk_weights.sum(-1), torch.ones(10))
    y.sum().backward()
    assert layer.router.weight.grad.abs().sum() > 0 and layer.experts.w_up.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="replay_idx"):
        moe_forward(layer, x, replay_idx=other[:3])


def test_route_in_leaves_the_model_and_counts_changed_sets(tiny_model):
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(3))
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    _, trace32 = route_in(tiny_model, ids, torch.float32)
    _, trace16 = route_in(tiny_model, ids, torch.bfloat16)
    assert trace16.shape == trace32.shape == (2, 2, 12, 2)
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in before.items())
    assert next(tiny_model.parameters()).dtype == torch.float32
    assert not expert_sets_differ(trace32, trace32.flip(-1)).any()  # slot order does not count
    assert expert_sets_differ(torch.tensor([[0, 1]]), torch.tensor([[0, 2]])).tolist() == [True]


def test_batch_dependence_needs_a_capacity():
    torch.manual_seed(0)
    layer = SparseMoE(16, 32, 4, 2)
    x = torch.randn(4, 12, 16)
    assert batch_dependence(layer, x).changed == 0.0
    layer.capacity_factor = 1.0
    capped = batch_dependence(layer, x)
    assert capped.changed > 0 and capped.dropped_alone > 0


# ------------------------------------------------------------------ the cost model and timing


def test_step_cost_and_roofline_at_known_points():
    one = moe_step_cost(1, 64, 128, 8, 2)
    assert one.experts_touched == pytest.approx(2.0)
    assert one.flops == 2 * (2 * 3 * 64 * 128 + 64 * 8)
    assert one.bytes_read == (2 * 3 * 64 * 128 + 64 * 8) * 4
    dense = moe_step_cost(1, 64, 256, 1, 1)
    assert dense.flops == 2 * 3 * 64 * 256 and dense.bytes_read == 3 * 64 * 256 * 4
    assert roofline_seconds(one, bandwidth=1e9, flops_per_second=1e15) == one.bytes_read / 1e9
    assert offload_tokens_per_second(2, 1e6, 1e9) == pytest.approx(500.0)
    assert offload_tokens_per_second(0, 1e6, 1e9) == float("inf")
    with pytest.raises(ValueError, match="experts_touched"):
        moe_step_cost(1, 64, 128, 8, 2, experts_touched=9)
    with pytest.raises(ValueError, match="bandwidth"):
        roofline_seconds(one, bandwidth=0, flops_per_second=1)


def test_spread_and_findings_are_worded_from_the_numbers():
    spread = Spread.of([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (spread.q1, spread.median, spread.q3) == (2.0, 3.0, 4.0)
    rows = time_layers(LayerShape(32, 32, 4, 2), (1, 4), bandwidth_gbs=10.0, matmul_gflops=10.0,
                       repeats=3, flush_bytes=2**16)
    assert len(rows) == 6 and all(r.spread.median > 0 and r.roofline_ms > 0 for r in rows)
    lines = timing_findings(rows)
    assert len(lines) == 2 and all(line.startswith("B=") and "dense total" in line for line in lines)


# ------------------------------------------------------------------ the figures and the widget


def test_traffic_table_and_widget():
    from moe_lab.viz.inference import hit_rate_figure, traffic_figure, traffic_table
    from moe_lab.widgets.inference import TrafficExplorer

    table = traffic_table(8, 2, batch_sizes=(1, 8, 512))
    assert table.distinct == [2.0, round(expected_distinct_experts(8, 2, 8), 3), 8.0]
    # every expert touched: the bytes of the dense FFN of the same total size (+ the router's)
    assert table.moe_mb[-1] == pytest.approx(table.dense_total_mb[-1] + 4096 * 8 * 2 / 1e6, abs=0.1)
    assert table.moe_gflops[-1] == pytest.approx(table.dense_total_gflops[-1] / 4, rel=1e-3)
    assert len(traffic_figure(table).data) == 4
    assert len(hit_rate_figure({"lru": [0.5, 0.9]}, [2, 4]).data) == 1
    widget = TrafficExplorer()
    widget.num_experts.value = 64
    widget.top_k.value = 8
    widget.batch.value = 8
    assert f"{expected_distinct_experts(64, 8, 8):.2f} of 64" in widget.summary.value
    widget.num_experts.value = 4  # K is clamped to E
    assert widget.top_k.value == 4 and "4.00 of 4" in widget.summary.value
