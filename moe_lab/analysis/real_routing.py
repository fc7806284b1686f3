"""How two real trained MoEs route: expert counts of OLMoE-1B-7B and Mixtral-8x7B. Lesson 09.

The data (``moe_lab/datasets/real_routing/``, Apache-2.0, from the allenai/OLMoE repository,
``scripts/routing_output/``; Muennighoff et al. 2024, arXiv:2409.02060, section 5) count how often
each expert was chosen at layers 0, 7 and 15, over 208,896 tokens of each of five text domains
(arXiv, books, C4, GitHub, Wikipedia; OLMoE also Tulu). It is plain JSON, read with ``json``
(never pickle) and checked on load: every layer's counts sum to tokens x K.

From a count vector c (E,) of one layer and domain:

    load share        s_i = c_i / sum_j c_j                      (sums to 1)
    max / mean load   max_i c_i / mean_i c_i                     (1 when balanced, E/K at worst)
    load entropy      H = -sum_i s_i log2 s_i                    (log2 E when balanced)
    specialisation    100 * c_i(D) / tokens(D)  = % of domain D's tokens that chose expert i
                      (the OLMoE paper's "domain specialization", its Figure 22, drawn by
                      scripts/plot_routing_analysis_v2.ipynb; uniform routing gives 100 K / E)

and over domains, the mutual information I(domain; expert) of the (domain, expert) assignment
counts (:func:`moe_lab.lm.specialisation.mutual_information`, the measure of lesson 05).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from moe_lab.lm.specialisation import entropy_bits, mutual_information
from moe_lab.lm.stats import max_over_mean_load

DATA_DIR = Path(__file__).resolve().parents[1] / "datasets" / "real_routing"
DATA_FILE = DATA_DIR / "olmoe_mixtral_expert_counts.json"
LICENCE_FILE = DATA_DIR / "LICENSE-OLMoE-Apache-2.0.txt"
COMMON_DOMAINS = ("arxiv", "book", "c4", "github", "wikipedia")  # measured for both models


@dataclass(frozen=True)
class ModelRouting:
    """Expert counts of one trained model. L = 3 layers, P = 2 layer pairs.

    expert_counts[domain]:        (L, E) int64 assignments per expert (all K slots)
    expert_counts_top1[domain]:   (L, E) int64 first choices only          (not for Tulu)
    crosslayer[domain]:           (P, E, E) int64: slot k chose i at layer a and j at layer b
    crosslayer_top1[domain]:      (P, E, E) int64 the same, first choices only   (not for Tulu)
    variants[name][domain]:       (L, E) int64 counts of fine-tuned versions (OLMoE SFT, DPO)
    """

    key: str
    model: str
    num_experts: int
    top_k: int
    layers: tuple[int, ...]
    crosslayer_pairs: tuple[tuple[int, int], ...]
    domains: tuple[str, ...]
    tokens: dict[str, int]
    expert_counts: dict[str, torch.Tensor]
    expert_counts_top1: dict[str, torch.Tensor]
    crosslayer: dict[str, torch.Tensor]
    crosslayer_top1: dict[str, torch.Tensor]
    variants: dict[str, dict[str, torch.Tensor]]

    def layer_index(self, layer: int) -> int:
        if layer not in self.layers:
            raise ValueError(f"layer must be one of {self.layers}, got {layer!r}")
        return self.layers.index(layer)


def _counts(name: str, value: object, shape: tuple[int, ...]) -> torch.Tensor:
    """A nested list of non-negative ints of the given shape -> int64 tensor (ValueError if not)."""
    def check(v: object, depth: int) -> None:
        if depth == len(shape):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name}: counts must be non-negative integers, got {v!r}")
            return
        if not isinstance(v, list) or len(v) != shape[depth]:
            raise ValueError(f"{name}: expected shape {shape}")
        for item in v:
            check(item, depth + 1)

    check(value, 0)
    return torch.tensor(value, dtype=torch.int64)


def _expect_sums(name: str, counts: torch.Tensor, total: int) -> None:
    sums = counts.flatten(1).sum(dim=1)  # one sum per layer (or layer pair)
    if not bool((sums == total).all()):
        raise ValueError(f"{name}: each layer must sum to {total}, got {sums.tolist()}")


def _reject_constant(token: str) -> None:
    raise ValueError(f"the routing file holds {token}, not a count")


def _model(key: str, raw: dict, layers: tuple[int, ...], pairs: tuple[tuple[int, int], ...]) -> ModelRouting:
    for field in ("num_experts", "top_k"):
        value = raw[field]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key}/{field} must be an integer >= 1, got {value!r}")
    num_experts, top_k = raw["num_experts"], raw["top_k"]
    num_layers, num_pairs, e = len(layers), len(pairs), num_experts
    fields: dict[str, dict[str, torch.Tensor]] = {f: {} for f in (
        "expert_counts", "expert_counts_top1", "expert_counts_crosslayer", "expert_counts_crosslayer_top1")}
    tokens = {}
    for domain, entry in raw["domains"].items():
        where = f"{key}/{domain}"
        counts = _counts(f"{where}/expert_counts", entry["expert_counts"], (num_layers, e))
        tokens[domain], remainder = divmod(int(counts[0].sum()), top_k)  # K assignments per token
        if remainder:
            raise ValueError(f"{where}/expert_counts: a layer's sum must be tokens x top_k={top_k}")
        # the other fields are optional (Tulu has only expert_counts); checked when present
        shapes = {"expert_counts": ((num_layers, e), tokens[domain] * top_k),
                  "expert_counts_top1": ((num_layers, e), tokens[domain]),
                  "expert_counts_crosslayer": ((num_pairs, e, e), tokens[domain] * top_k),
                  "expert_counts_crosslayer_top1": ((num_pairs, e, e), tokens[domain])}
        for field, (shape, total) in shapes.items():
            if field in entry:
                counts = _counts(f"{where}/{field}", entry[field], shape)
                _expect_sums(f"{where}/{field}", counts, total)
                fields[field][domain] = counts
    variants = {}
    for name, domains in raw.get("variants", {}).items():
        variants[name] = {}
        for domain, entry in domains.items():
            where = f"{key}/{name}/{domain}"
            counts = _counts(where, entry["expert_counts"], (num_layers, e))
            if int(counts[0].sum()) % top_k:
                raise ValueError(f"{where}: a layer's sum must be tokens x top_k={top_k}")
            _expect_sums(where, counts, int(counts[0].sum()))  # the same tokens at every layer
            variants[name][domain] = counts
    return ModelRouting(
        key=key, model=str(raw["model"]), num_experts=num_experts, top_k=top_k, layers=layers,
        crosslayer_pairs=pairs, domains=tuple(raw["domains"]), tokens=tokens,
        expert_counts=fields["expert_counts"], expert_counts_top1=fields["expert_counts_top1"],
        crosslayer=fields["expert_counts_crosslayer"],
        crosslayer_top1=fields["expert_counts_crosslayer_top1"], variants=variants)


def load_real_routing(path: str | Path | None = None) -> dict[str, ModelRouting]:
    """The shipped counts (or a file of the same format): {"olmoe": ..., "mistral": ...}.

    Safe JSON only (no pickle; NaN and Infinity refused); shapes and sums are checked, so a
    damaged file raises a ValueError naming the field.
    """
    path = DATA_FILE if path is None else Path(path)
    with open(path, encoding="utf-8") as f:
        raw = json.load(f, parse_constant=_reject_constant)
    try:
        layers = tuple(int(layer) for layer in raw["layers"])
        pairs = tuple((int(a), int(b)) for a, b in raw["crosslayer_pairs"])
        return {key: _model(key, entry, layers, pairs) for key, entry in raw["models"].items()}
    except (KeyError, TypeError) as error:
        raise ValueError(f"{path.name} is not a routing-counts file: missing or bad field {error}") from None


# ----------------------------------------------------------------------------- statistics

def load_entropy_bits(counts: torch.Tensor) -> float:
    """H(s) in bits of the load share s = c / sum c of one count vector (E,)."""
    return entropy_bits(counts.double() / counts.sum()) if counts.sum() > 0 else 0.0


@dataclass(frozen=True)
class LoadRow:
    """The load of one model at one layer on one domain."""

    model: str
    domain: str
    layer: int
    max_over_mean: float
    entropy_bits: float
    max_entropy_bits: float  # log2 E: uniform load


def load_imbalance(routing: ModelRouting, domains: tuple[str, ...] = COMMON_DOMAINS) -> list[LoadRow]:
    """Max/mean load and load entropy per layer and domain (all K slots counted)."""
    rows = []
    for domain in domains:
        for layer, counts in zip(routing.layers, routing.expert_counts[domain], strict=True):
            rows.append(LoadRow(routing.model, domain, layer, max_over_mean_load(counts),
                                load_entropy_bits(counts), math.log2(routing.num_experts)))
    return rows


def max_over_mean_at(model: str, domain: str, layer: int) -> float:
    """Max/mean load of a shipped model ("olmoe" or "mistral") at one layer on one domain."""
    routing = load_real_routing()[model]
    return max_over_mean_load(routing.expert_counts[domain][routing.layer_index(layer)])


def domain_specialisation(routing: ModelRouting, layer: int,
                          domains: tuple[str, ...] = COMMON_DOMAINS) -> torch.Tensor:
    """(D, E): the % of each domain's tokens that chose each expert at that layer (OLMoE paper,
    Figure 22). A row sums to 100 K; uniform routing puts 100 K / E everywhere."""
    i = routing.layer_index(layer)
    return torch.stack([100.0 * routing.expert_counts[d][i].double() / routing.tokens[d]
                        for d in domains])  # (D, E)


@dataclass(frozen=True)
class SpecialisationRow:
    """How much one model's expert choice at one layer depends on the domain."""

    model: str
    layer: int
    mutual_information_bits: float    # I(domain; expert) over assignments
    domain_entropy_bits: float        # H(domain): the most I could be
    max_specialisation: float         # the largest % of a domain's tokens on one expert
    uniform: float                    # 100 K / E
    experts_over_twice_uniform: int   # experts with some domain above 2 x uniform


def specialisation_summary(routing: ModelRouting,
                           domains: tuple[str, ...] = COMMON_DOMAINS) -> list[SpecialisationRow]:
    rows = []
    uniform = 100.0 * routing.top_k / routing.num_experts
    for layer in routing.layers:
        i = routing.layer_index(layer)
        table = torch.stack([routing.expert_counts[d][i] for d in domains])  # (D, E) assignments
        share = domain_specialisation(routing, layer, domains)  # (D, E) %
        rows.append(SpecialisationRow(
            model=routing.model, layer=layer, mutual_information_bits=mutual_information(table),
            domain_entropy_bits=entropy_bits(table.sum(1).double() / table.sum()),
            max_specialisation=float(share.max()), uniform=uniform,
            experts_over_twice_uniform=int((share > 2 * uniform).any(dim=0).sum())))
    return rows


def coactivation(routing: ModelRouting, pair: int, domains: tuple[str, ...] = COMMON_DOMAINS) -> torch.Tensor:
    """(E, E): P(expert j at the later layer | expert i at the earlier layer), same slot, summed
    over the domains; each row sums to 1 (a row of an unused expert stays 0)."""
    counts = sum(routing.crosslayer[d][pair].double() for d in domains)  # (E, E)
    return counts / counts.sum(dim=1, keepdim=True).clamp_min(1)


def coactivation_information(routing: ModelRouting, pair: int,
                             domains: tuple[str, ...] = COMMON_DOMAINS) -> float:
    """I(expert at layer a; expert at layer b) in bits, from the same-slot co-occurrence counts."""
    return mutual_information(sum(routing.crosslayer[d][pair] for d in domains))
