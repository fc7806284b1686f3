"""Do experts specialise, and by what? Counts and mutual information between labels and experts.
Lesson 05.

Every (token, slot) assignment of a layer is one sample of a pair (label, expert), where the label
is the token's language or its byte class. From the count table c[l, e]:

    p(l, e) = c[l, e] / sum c          p(l) = sum_e p(l, e)          p(e) = sum_l p(l, e)
    I(L; E) = sum_{l,e} p(l, e) log2( p(l, e) / (p(l) p(e)) )       bits, 0 log 0 = 0

I = 0 when the expert choice is independent of the label; I = H(L) when the label fixes the expert
(one expert per label, K = 1); always I <= min(H(L), H(E)). A finite sample gives a small positive
I even for an independent router, so we compare with a random-router baseline: the same expert
choices shuffled across tokens (same expert loads, no dependence on the token).

Language and byte class are confounded (Korean is nearly all multi-byte bytes, English nearly all
letters), so we also compute the conditional information

    I(L; E | C) = sum_c p(c) I(L; E | C = c)

how much the language tells about the expert among tokens of the same byte class (and
I(C; E | L) the other way round). The script (Latin, Hangul, Cyrillic, ...) is a third label:
I(L; E | script) is what the language adds beyond its writing system. ST-MoE (Zoph et al. 2022,
section 7) found encoder experts specialising by token type (punctuation, proper nouns, ...), not
by language.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from moe_lab.lm.data import SCRIPTS, Batch
from moe_lab.lm.model import TinyLM
from moe_lab.validation import check_index_tensor, check_positive_int

BYTE_CLASSES = ("letter", "digit", "space", "punctuation", "other/multibyte")
_PUNCTUATION = b"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"


def _byte_class_table() -> torch.Tensor:
    table = torch.full((256,), 4, dtype=torch.long)  # other / multi-byte UTF-8
    for byte in range(128):
        char = chr(byte)
        if char.isalpha():
            table[byte] = 0
        elif char.isdigit():
            table[byte] = 1
        elif char.isspace():
            table[byte] = 2
        elif byte in _PUNCTUATION:
            table[byte] = 3
    return table


_BYTE_CLASS_TABLE = _byte_class_table()  # (256,) byte -> index into BYTE_CLASSES


def byte_class(token_ids: torch.Tensor) -> torch.Tensor:
    """The class of each byte: 0 letter, 1 digit, 2 space, 3 punctuation (ASCII), 4 other."""
    if not isinstance(token_ids, torch.Tensor) or token_ids.is_floating_point():
        raise TypeError("token_ids must be an integer torch.Tensor of byte ids")
    if token_ids.numel() and (token_ids.min() < 0 or token_ids.max() > 255):
        raise ValueError("token_ids must lie in [0, 256)")
    return _BYTE_CLASS_TABLE.to(token_ids.device)[token_ids]


def _joint_counts(labels: torch.Tensor, topk_idx: torch.Tensor, rows: int, cols: int,
                  num_experts: int) -> torch.Tensor:
    """(rows, cols, E) counts for labels flattened as row * cols + col."""
    return label_expert_counts(labels, topk_idx, rows * cols, num_experts) \
        .view(rows, cols, num_experts)


def label_expert_counts(labels: torch.Tensor, topk_idx: torch.Tensor, num_labels: int,
                        num_experts: int) -> torch.Tensor:
    """c[l, e] = number of (token, slot) assignments of tokens with label l to expert e."""
    check_positive_int("num_labels", num_labels)
    check_positive_int("num_experts", num_experts)
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
        raise ValueError("labels must be a 1-D tensor (N,) of label ids")
    check_index_tensor("topk_idx", topk_idx, labels.shape[0], num_experts)
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_labels):
        raise ValueError(f"labels must lie in [0, num_labels={num_labels})")
    pair = labels.long().unsqueeze(1) * num_experts + topk_idx  # (N, K) flat (l, e) index
    counts = torch.bincount(pair.reshape(-1), minlength=num_labels * num_experts)
    return counts.view(num_labels, num_experts).double()  # (L, E)


def entropy_bits(probs: torch.Tensor) -> float:
    """H = -sum p log2 p (0 log 0 = 0) of a probability vector or table."""
    p = probs.double().flatten()
    p = p[p > 0]
    return float(-(p * p.log2()).sum())


def mutual_information(counts: torch.Tensor) -> float:
    """I(L; E) in bits from a count (or probability) table (L, E); 0 for an empty table."""
    if not isinstance(counts, torch.Tensor) or counts.dim() != 2:
        raise ValueError("counts must be a 2-D tensor (labels, experts)")
    if (counts < 0).any():
        raise ValueError("counts must be >= 0")
    total = counts.double().sum()
    if total == 0:
        return 0.0
    p_joint = counts.double() / total  # (L, E)
    p_label = p_joint.sum(dim=1, keepdim=True)  # (L, 1)
    p_expert = p_joint.sum(dim=0, keepdim=True)  # (1, E)
    nonzero = p_joint > 0
    # I = sum_{l,e} p(l,e) log2( p(l,e) / (p(l) p(e)) )
    ratio = p_joint[nonzero] / (p_label * p_expert).expand_as(p_joint)[nonzero]
    return float((p_joint[nonzero] * ratio.log2()).sum().clamp_min(0.0))


def conditional_mutual_information(counts: torch.Tensor) -> float:
    """I(L; E | C) in bits from a count table (C, L, E): sum_c p(c) I(L; E | C = c)."""
    if not isinstance(counts, torch.Tensor) or counts.dim() != 3:
        raise ValueError("counts must be a 3-D tensor (condition, labels, experts)")
    total = counts.double().sum()
    if total == 0:
        return 0.0
    return sum(float(c.sum() / total) * mutual_information(c) for c in counts.double())


@dataclass(frozen=True)
class RoutingTrace:
    """The routing of the real (unpadded) tokens of some batches: token_ids (N,),
    language_ids (N,), topk_idx per MoE layer (N, K)."""

    token_ids: torch.Tensor
    language_ids: torch.Tensor
    topk_idx: list[torch.Tensor]

    @property
    def byte_classes(self) -> torch.Tensor:
        return byte_class(self.token_ids)  # (N,)

    def subset(self, keep: torch.Tensor) -> RoutingTrace:
        """The tokens where ``keep`` (N,) bool is True, e.g. the Latin-script languages."""
        if not isinstance(keep, torch.Tensor) or keep.shape != self.token_ids.shape:
            raise ValueError(f"keep must be a bool tensor of shape {tuple(self.token_ids.shape)}")
        keep = keep.bool()
        return RoutingTrace(self.token_ids[keep], self.language_ids[keep],
                            [idx[keep] for idx in self.topk_idx])


@torch.no_grad()
def collect_routing(model: TinyLM, batches: Sequence[Batch]) -> RoutingTrace:
    """Run the batches through the model (eval mode) and keep each real token's expert choices."""
    if model.config.ffn != "moe":
        raise ValueError("collect_routing needs a model with ffn='moe'")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    tokens, languages = [], []
    per_layer: list[list[torch.Tensor]] = [[] for _ in range(model.config.n_layers)]
    for batch in batches:
        batch = batch.to(device)
        out = model(batch.input_ids, attention_mask=batch.attention_mask)
        real = batch.attention_mask.reshape(-1)  # (N,)
        tokens.append(batch.input_ids.reshape(-1)[real].cpu())
        language_per_token = batch.language_ids.unsqueeze(1).expand_as(batch.input_ids)  # (B, T)
        languages.append(language_per_token.reshape(-1)[real].cpu())
        for layer, routing in enumerate(out.routing):
            per_layer[layer].append(routing.topk_idx[real].cpu())
    model.train(was_training)
    return RoutingTrace(torch.cat(tokens), torch.cat(languages),
                        [torch.cat(chunks) for chunks in per_layer])


def shuffled_router(topk_idx: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The random-router baseline: the same rows of expert choices, given to random tokens."""
    generator = torch.Generator().manual_seed(seed)
    return topk_idx[torch.randperm(topk_idx.shape[0], generator=generator)]  # (N, K)


@dataclass(frozen=True)
class LayerSpecialisation:
    """One MoE layer. Counts: language_counts (L, E), byte_class_counts (C, E). Information in
    bits: mi_* for the trained router, baseline_* for the shuffled router, and the conditional
    informations I(L; E | C) and I(C; E | L)."""

    layer: int
    language_counts: torch.Tensor
    byte_class_counts: torch.Tensor
    mi_language: float
    mi_byte_class: float
    baseline_mi_language: float
    baseline_mi_byte_class: float
    mi_language_given_class: float
    mi_class_given_language: float
    mi_script: float  # I(script; E)
    mi_language_given_script: float  # I(L; E | script): language beyond its writing system


@dataclass(frozen=True)
class SpecialisationReport:
    languages: list[str]
    num_experts: int
    h_language: float  # H(L) in bits, over the traced tokens
    h_byte_class: float  # H(C) in bits
    layers: list[LayerSpecialisation]

    def table(self) -> list[dict[str, float]]:
        """One row per layer, numbers rounded to 3 decimals (for printing)."""
        return [{"layer": s.layer, "I(lang;E)": round(s.mi_language, 3),
                 "random I(lang;E)": round(s.baseline_mi_language, 3),
                 "I(class;E)": round(s.mi_byte_class, 3),
                 "random I(class;E)": round(s.baseline_mi_byte_class, 3),
                 "I(lang;E|class)": round(s.mi_language_given_class, 3),
                 "I(class;E|lang)": round(s.mi_class_given_language, 3),
                 "I(script;E)": round(s.mi_script, 3),
                 "I(lang;E|script)": round(s.mi_language_given_script, 3)} for s in self.layers]


def specialisation_report(trace: RoutingTrace, languages: Sequence[str], num_experts: int,
                          *, scripts: Mapping[str, str] | None = None,
                          seed: int = 0) -> SpecialisationReport:
    """Counts and informations of every layer of a trace, against the shuffled-router baseline.
    ``scripts`` maps each language to its writing system (default: :data:`moe_lab.lm.data.SCRIPTS`,
    languages it does not know count as their own script)."""
    num_languages, num_classes = len(languages), len(BYTE_CLASSES)
    language_ids, classes = trace.language_ids, trace.byte_classes
    joint = classes * num_languages + language_ids  # (N,) flat (class, language)
    scripts = SCRIPTS if scripts is None else scripts
    script_names = sorted({scripts.get(lang, lang) for lang in languages})
    script_of_language = torch.tensor([script_names.index(scripts.get(lang, lang))
                                       for lang in languages], dtype=torch.long)  # (L,)
    script_ids = script_of_language[language_ids]  # (N,)
    num_scripts = len(script_names)
    script_language = script_ids * num_languages + language_ids  # (N,) flat (script, lang)
    layers = []
    for layer, topk_idx in enumerate(trace.topk_idx):
        baseline = shuffled_router(topk_idx, seed=seed + layer)
        # one (class, language, E) table per router; the marginals are its sums
        by_both = _joint_counts(joint, topk_idx, num_classes, num_languages, num_experts)
        base_both = _joint_counts(joint, baseline, num_classes, num_languages, num_experts)
        by_script_language = _joint_counts(script_language, topk_idx, num_scripts, num_languages, num_experts)
        by_language, by_class = by_both.sum(0), by_both.sum(1)  # (L, E), (C, E)
        layers.append(LayerSpecialisation(
            layer=layer, language_counts=by_language, byte_class_counts=by_class,
            mi_language=mutual_information(by_language),
            mi_byte_class=mutual_information(by_class),
            baseline_mi_language=mutual_information(base_both.sum(0)),
            baseline_mi_byte_class=mutual_information(base_both.sum(1)),
            mi_language_given_class=conditional_mutual_information(by_both),
            mi_class_given_language=conditional_mutual_information(by_both.transpose(0, 1)),
            mi_script=mutual_information(by_script_language.sum(1)),
            mi_language_given_script=conditional_mutual_information(by_script_language),
        ))
    h_language = entropy_bits(torch.bincount(language_ids, minlength=num_languages).double()
                              / max(len(language_ids), 1))
    h_class = entropy_bits(torch.bincount(classes, minlength=num_classes).double()
                           / max(len(classes), 1))
    return SpecialisationReport(list(languages), num_experts, h_language, h_class, layers)
