"""A byte-level tokenizer: every string in every script is a sequence of UTF-8 bytes (0-255).

No vocabulary file, nothing to download, no unknown token: Hangul, Devanagari, Cyrillic and
emoji all encode. A Hangul syllable is three bytes, so three tokens; :meth:`ByteTokenizer.pieces`
gives a printable label per token for the routing explorer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def clean_text(text: object) -> str:
    """``text`` as UTF-8 can encode it: lone surrogates (which no byte sequence represents)
    become '?'. Raises TypeError for a non-string."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return text.encode("utf-8", errors="replace").decode("utf-8")


@dataclass(frozen=True)
class ByteTokenizer:
    """UTF-8 bytes as token ids; ``vocab_size`` = 256."""

    vocab_size: int = 256

    def encode(self, text: str) -> list[int]:
        """UTF-8 bytes; a lone surrogate (no UTF-8 form) becomes '?', as in :meth:`pieces`."""
        return list(clean_text(text).encode("utf-8"))

    def encode_tensor(self, text: str) -> torch.Tensor:
        return torch.tensor(self.encode(text), dtype=torch.long)  # (T,)

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        bad = [i for i in ids if not 0 <= int(i) < 256]
        if bad:
            raise ValueError(f"ids must lie in [0, 256), got {bad[:5]}")
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def pieces(self, text: str) -> list[str]:
        """One printable label per byte token: the character on its first byte, then a
        continuation mark ('·') on the other bytes of a multi-byte character."""
        labels: list[str] = []
        for char in clean_text(text):
            n_bytes = len(char.encode("utf-8"))
            shown = {" ": "␠", "\n": "⏎", "\t": "⇥"}.get(char, char)
            labels.extend([shown] + ["·"] * (n_bytes - 1))
        return labels
