"""A toy router on bytes for the lesson widgets: a fixed, seeded embedding of the 256 byte
tokens (:class:`moe_lab.lm.tokenizer.ByteTokenizer`) feeding a :class:`moe_lab.TopKRouter` whose
gate weights are also fixed and seeded, so the same text always routes the same way."""

from __future__ import annotations

import torch

from moe_lab.lm import text_routing
from moe_lab.lm.text_routing import TextRouting
from moe_lab.lm.tokenizer import ByteTokenizer
from moe_lab.routing import RouterOutput, TopKRouter


class ToyByteRouter:
    """Route byte tokens of a text. ``embedding_scale`` sets how peaked the probabilities are."""

    def __init__(self, d_model: int = 32, num_experts: int = 8, *, seed: int = 0,
                 embedding_scale: float = 3.0) -> None:
        self.tokenizer = ByteTokenizer()
        self.d_model, self.num_experts, self.seed = d_model, num_experts, seed
        gen = torch.Generator().manual_seed(seed)
        self.embedding = torch.randn(self.tokenizer.vocab_size, d_model,
                                     generator=gen) * embedding_scale  # (256, D)
        # W ~ U(-1/sqrt(D), 1/sqrt(D)), nn.Linear's initialisation, from our own generator
        self.gate_weight = (torch.rand(num_experts, d_model, generator=gen) * 2 - 1) \
            / d_model ** 0.5  # (E, D)

    def router(self, top_k: int, *, noise: str | None = None,
               router_dtype: torch.dtype = torch.float32) -> TopKRouter:
        """A TopKRouter with this toy's gate weights (training mode when noise is on)."""
        router = TopKRouter(self.d_model, self.num_experts, top_k, noise=noise,
                            router_dtype=router_dtype)
        with torch.no_grad():
            router.weight.copy_(self.gate_weight)
        return router.train(noise is not None)

    def route(self, text: str, top_k: int, *, noise: str | None = None,
              router_dtype: torch.dtype = torch.float32, max_tokens: int = 64) -> TextRouting:
        """Tokenise ``text`` (any string, even empty), keep the first ``max_tokens`` bytes and
        route them (:func:`moe_lab.lm.text_routing.route_bytes`, one layer). Noise is seeded, so a
        redraw with the same settings gives the same picture; the caller's random state is
        left as it was."""

        def route_ids(ids: torch.Tensor) -> list[RouterOutput]:  # ids: (T,)
            x = self.embedding[ids]  # (T, D)
            with torch.random.fork_rng(devices=[]):  # the router's init and noise draw here
                torch.manual_seed(self.seed)
                return [self.router(top_k, noise=noise, router_dtype=router_dtype)(x)]

        return text_routing.route_bytes(text, route_ids, max_tokens=max_tokens,
                                       tokenizer=self.tokenizer)
