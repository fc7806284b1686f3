"""Beyond token-choice top-k (lesson 08): layers built from the core's router and experts.

    expert_choice  ExpertChoiceMoE: each expert picks its tokens (Zhou et al. 2022)
    soft_moe       SoftMoE: experts see convex mixes of tokens (Puigcerver et al. 2023)
    upcycling      upcycle: an MoE started from a trained dense FFN (Komatsuzaki et al. 2022)
    causality      does a later token change an earlier token's output?

Layering: imports the core only.
"""
