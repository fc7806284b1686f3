"""A real multilingual corpus, split and batched as bytes, with each sequence's language. Lesson 05.

The corpus is chatterbot-corpus (BSD licence, installed from PyPI with the course): about 1 MB
of short dialogues in 28 languages (Korean, Hindi, Persian, Japanese, Ukrainian, English, ...),
one folder of YAML files per language. One conversation (its lines joined by newlines) is one
sequence, labelled with its folder's language.

Split: sequences are de-duplicated, then each distinct text goes to validation when a hash of
(seed, text) falls below ``valid_fraction``: deterministic across runs and machines, and no text
is in both splits.

Batches: the training sequences of each language are packed into one byte stream; a training
window of T + 1 bytes is cut at a random place of one language's stream, the language drawn with
probability proportional to (bytes of that language)^alpha (alpha < 1 up-samples the small
languages, as in XLM and mT5). Validation windows are cut one after another from each language's
validation stream; the last window of a language is padded on the right, with ``attention_mask``
False at the padding.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import yaml

from moe_lab.lm.model import IGNORE_INDEX
from moe_lab.lm.tokenizer import ByteTokenizer
from moe_lab.validation import check_positive_float, check_positive_int

SEPARATOR = "\n\n"  # between sequences packed into one stream

#: The writing system of each corpus language. At the byte level the script is visible in every
#: token (UTF-8 lead bytes differ by script), so it confounds "language" specialisation.
SCRIPTS = {
    "bengali": "Bengali", "chinese": "Han", "dutch": "Latin", "english": "Latin",
    "french": "Latin", "german": "Latin", "hebrew": "Hebrew", "hindi": "Devanagari",
    "hinglish": "Latin", "indonesian": "Latin", "italian": "Latin", "japanese": "Japanese",
    "korean": "Hangul", "marathi": "Devanagari", "oriya": "Odia", "persian": "Arabic",
    "portuguese": "Latin", "russian": "Cyrillic", "spanish": "Latin", "swedish": "Latin",
    "tamil": "Tamil", "telugu": "Telugu", "thai": "Thai", "traditionalchinese": "Han",
    "turkish": "Latin", "ukrainian": "Cyrillic", "urdu": "Arabic", "yoruba": "Latin",
}


@dataclass(frozen=True)
class Sample:
    """One sequence of the corpus: text, language (folder name), source ("korean/ai.yml#3")."""

    text: str
    language: str
    source: str


@dataclass(frozen=True)
class CorpusSplit:
    train: list[Sample]
    valid: list[Sample]


@dataclass(frozen=True)
class Batch:
    """input_ids (B, T) int64; targets (B, T) int64, IGNORE_INDEX at padding; attention_mask
    (B, T) bool, True for real tokens; language_ids (B,) int64 (index into the languages)."""

    input_ids: torch.Tensor
    targets: torch.Tensor
    attention_mask: torch.Tensor
    language_ids: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device) for t in (self.input_ids, self.targets, self.attention_mask,
                                              self.language_ids)))


def _corpus_dir() -> importlib.resources.abc.Traversable:
    """The installed chatterbot-corpus data folder (one subfolder per language)."""
    return importlib.resources.files("chatterbot_corpus") / "data"


def list_languages() -> list[str]:
    """The corpus's languages, sorted: the index of a language here is its language id."""
    return sorted(p.name for p in _corpus_dir().iterdir() if p.is_dir() and not
                  p.name.startswith(("_", ".")))


def _conversation_text(conversation: object) -> str | None:
    """A conversation is a list of lines; a few files hold a bare string instead."""
    if isinstance(conversation, str):
        return conversation.strip() or None
    if isinstance(conversation, list):
        lines = [str(line).strip() for line in conversation if line is not None]
        return "\n".join(line for line in lines if line) or None
    return None


def load_corpus(languages: Sequence[str] | None = None) -> list[Sample]:
    """Every conversation of the corpus (or of ``languages``) as a Sample, in a fixed order."""
    available = list_languages()
    chosen = available if languages is None else list(languages)
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        raise ValueError(f"languages must be among {available}, got unknown {unknown}")
    samples: list[Sample] = []
    for language in chosen:
        folder = _corpus_dir() / language
        for path in sorted((p for p in folder.iterdir() if p.name.endswith((".yml", ".yaml"))),
                           key=lambda p: p.name):
            document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            for i, conversation in enumerate(document.get("conversations") or []):
                text = _conversation_text(conversation)
                if text:
                    samples.append(Sample(text, language, f"{language}/{path.name}#{i}"))
    return samples


def _bucket(text: str, seed: int) -> float:
    """A number in [0, 1) fixed by (seed, text): the same on every machine and run."""
    digest = hashlib.sha256(f"{seed}\x00{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_corpus(samples: Sequence[Sample], valid_fraction: float = 0.1,
                 seed: int = 0) -> CorpusSplit:
    """Drop repeated texts (first one kept), then send each text to validation when its hash
    bucket is below ``valid_fraction``. No text appears in both splits."""
    check_positive_float("valid_fraction", valid_fraction)
    if valid_fraction >= 1:
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
    seen: set[str] = set()
    train: list[Sample] = []
    valid: list[Sample] = []
    for sample in samples:
        if sample.text in seen:
            continue
        seen.add(sample.text)
        (valid if _bucket(sample.text, seed) < valid_fraction else train).append(sample)
    return CorpusSplit(train, valid)


@dataclass(frozen=True)
class LanguageStreams:
    """One packed byte stream per language: languages[i] owns streams[i] (L_i,) int64."""

    languages: list[str]
    streams: list[torch.Tensor]

    @classmethod
    def from_samples(cls, samples: Sequence[Sample], languages: Sequence[str],
                     tokenizer: ByteTokenizer | None = None) -> LanguageStreams:
        tokenizer = tokenizer or ByteTokenizer()
        texts: dict[str, list[str]] = {language: [] for language in languages}
        for sample in samples:
            if sample.language not in texts:
                raise ValueError(f"sample language {sample.language!r} not in languages")
            texts[sample.language].append(sample.text)
        streams = [tokenizer.encode_tensor(SEPARATOR.join(texts[lang])) for lang in languages]
        return cls(list(languages), streams)

    def num_bytes(self) -> torch.Tensor:
        return torch.tensor([len(s) for s in self.streams], dtype=torch.float64)  # (L,)

    def sampling_probs(self, alpha: float = 0.5) -> torch.Tensor:
        """p_l proportional to n_l^alpha over languages with at least one byte."""
        check_positive_float("alpha", alpha)
        n = self.num_bytes()  # (L,)
        # p_l = n_l^alpha / sum_j n_j^alpha
        weights = torch.where(n > 0, n.pow(alpha), torch.zeros_like(n))
        return weights / weights.sum()


def sample_batch(streams: LanguageStreams, batch_size: int, seq_len: int,
                 generator: torch.Generator, *, alpha: float = 0.5) -> Batch:
    """B random windows of T + 1 bytes, each from one language's training stream."""
    check_positive_int("batch_size", batch_size)
    check_positive_int("seq_len", seq_len)
    language_ids = torch.multinomial(streams.sampling_probs(alpha).float(), batch_size,
                                     replacement=True, generator=generator)  # (B,)
    rows = []
    for language in language_ids.tolist():
        stream = streams.streams[language]
        if len(stream) < seq_len + 1:  # a tiny language: repeat its stream to fill a window
            stream = stream.repeat(seq_len // max(len(stream), 1) + 2)
        start = int(torch.randint(len(stream) - seq_len, (1,), generator=generator))
        rows.append(stream[start:start + seq_len + 1])
    window = torch.stack(rows)  # (B, T + 1)
    mask = torch.ones(batch_size, seq_len, dtype=torch.bool)  # (B, T)
    return Batch(window[:, :-1], window[:, 1:], mask, language_ids)


def eval_batches(streams: LanguageStreams, batch_size: int, seq_len: int, *,
                 max_windows_per_language: int | None = None) -> list[Batch]:
    """Consecutive windows of every language's stream, the last one right-padded; fixed order."""
    check_positive_int("batch_size", batch_size)
    check_positive_int("seq_len", seq_len)
    inputs, targets, masks, languages = [], [], [], []
    for language, stream in enumerate(streams.streams):
        starts = range(0, max(len(stream) - 1, 0), seq_len)
        for window, start in enumerate(starts):
            if max_windows_per_language is not None and window >= max_windows_per_language:
                break
            chunk = stream[start:start + seq_len + 1]  # (<= T + 1,)
            length = len(chunk) - 1
            ids = torch.zeros(seq_len, dtype=torch.long)
            tgt = torch.full((seq_len,), IGNORE_INDEX, dtype=torch.long)
            ids[:length], tgt[:length] = chunk[:-1], chunk[1:]
            inputs.append(ids)
            targets.append(tgt)
            masks.append(torch.arange(seq_len) < length)
            languages.append(language)
    batches = []
    for i in range(0, len(inputs), batch_size):
        sl = slice(i, i + batch_size)
        batches.append(Batch(torch.stack(inputs[sl]), torch.stack(targets[sl]),
                             torch.stack(masks[sl]), torch.tensor(languages[sl])))
    return batches


@dataclass(frozen=True)
class LessonData:
    """The lesson's data, ready to train on: languages, the split, and the packed streams."""

    languages: list[str]
    split: CorpusSplit
    train: LanguageStreams
    valid: LanguageStreams


def load_lesson_data(valid_fraction: float = 0.1, seed: int = 0) -> LessonData:
    """Load, split and pack the whole corpus (about a second)."""
    languages = list_languages()
    split = split_corpus(load_corpus(languages), valid_fraction, seed)
    return LessonData(languages, split, LanguageStreams.from_samples(split.train, languages),
                      LanguageStreams.from_samples(split.valid, languages))
