"""MoE at inference: decoding with a routing trace, FLOPs against bytes, timing with a roofline,
expert caches for offloading, precision and routing replay, batch dependence. Lesson 10.

    decode     KV-cache decoding of lesson 05's model; the routing trace (L, B, S, K);
               moe_forward (own routing, or a replayed one)
    traffic    expected_distinct_experts, FLOPs and bytes per step, roofline, offload bound
    timing     measured bandwidth and matmul throughput; MoE vs dense FFNs at batch sizes
    cache      simulate_expert_cache (LRU / LFU), a static cache, prefetch by the previous layer
    replay     the same tokens in bf16 and fp32: which experts change; routing replay
    batching   with a capacity, a token's output depends on its batch

The layering (tests/test_layering.py): inference uses the core, variants, systems and lm.
"""

from moe_lab.inference.cache import CacheResult, simulate_expert_cache
from moe_lab.inference.traffic import expected_distinct_experts

__all__ = ["CacheResult", "expected_distinct_experts", "simulate_expert_cache"]
