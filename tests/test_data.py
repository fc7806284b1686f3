"""The multilingual corpus: languages, labels, the tokenizer on every script, split, batches."""

import pytest
import torch

from moe_lab.lm.data import (
    SEPARATOR,
    LanguageStreams,
    Sample,
    eval_batches,
    list_languages,
    load_corpus,
    sample_batch,
    split_corpus,
)
from moe_lab.lm.model import IGNORE_INDEX
from moe_lab.lm.tokenizer import ByteTokenizer


@pytest.fixture(scope="module")
def corpus():
    return load_corpus()


def test_languages_and_labels(corpus):
    languages = list_languages()
    assert len(languages) == 28 and "korean" in languages and languages == sorted(languages)
    assert {s.language for s in corpus} == set(languages)
    for sample in corpus:
        assert sample.source.startswith(sample.language + "/")
        assert sample.text and sample.text == sample.text.strip()
    korean = [s for s in corpus if s.language == "korean"]
    assert any("\uac00" <= ch <= "\ud7a3" for s in korean for ch in s.text)  # Hangul syllables


@pytest.mark.parametrize("language", list_languages())
def test_tokenizer_round_trip_on_every_language(corpus, language):
    tokenizer = ByteTokenizer()
    text = SEPARATOR.join(s.text for s in corpus if s.language == language)
    ids = tokenizer.encode(text)
    assert all(0 <= i < 256 for i in ids)
    assert tokenizer.decode(ids) == text
    assert len(tokenizer.pieces(text)) == len(ids)


def test_every_language_has_a_script():
    from moe_lab.lm.data import SCRIPTS

    assert set(SCRIPTS) == set(list_languages())


def test_unknown_language():
    with pytest.raises(ValueError, match="languages"):
        load_corpus(["klingon"])


def test_split_is_deterministic_and_disjoint(corpus):
    split = split_corpus(corpus, 0.1, seed=0)
    again = split_corpus(corpus, 0.1, seed=0)
    assert split == again
    train_texts = {s.text for s in split.train}
    valid_texts = {s.text for s in split.valid}
    assert not train_texts & valid_texts
    assert len(train_texts) == len(split.train) and len(valid_texts) == len(split.valid)
    assert train_texts | valid_texts == {s.text for s in corpus}
    share = len(split.valid) / (len(split.train) + len(split.valid))
    assert 0.07 < share < 0.13
    other = split_corpus(corpus, 0.1, seed=1)
    assert {s.text for s in other.valid} != valid_texts


def test_split_drops_repeats_and_checks_fraction():
    samples = [Sample("a", "english", "e#0"), Sample("a", "english", "e#1"),
               Sample("b", "english", "e#2")]
    split = split_corpus(samples, 0.5)
    assert len(split.train) + len(split.valid) == 2
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="valid_fraction"):
            split_corpus(samples, bad)


def test_streams_and_sampling_probs():
    samples = [Sample("ab", "x", "x#0"), Sample("cd", "x", "x#1"), Sample("efgh", "y", "y#0")]
    streams = LanguageStreams.from_samples(samples, ["x", "y", "z"])
    assert ByteTokenizer().decode(streams.streams[0]) == "ab" + SEPARATOR + "cd"
    assert streams.num_bytes().tolist() == [6, 4, 0]
    probs = streams.sampling_probs(alpha=1.0)
    torch.testing.assert_close(probs, torch.tensor([0.6, 0.4, 0.0], dtype=torch.float64))
    flat = streams.sampling_probs(alpha=0.5)
    assert flat[1] > probs[1]  # alpha < 1 up-samples the small language
    with pytest.raises(ValueError, match="languages"):
        LanguageStreams.from_samples(samples, ["x"])


def test_sample_batch_windows_come_from_their_language(corpus):
    languages = list_languages()
    streams = LanguageStreams.from_samples(corpus, languages)
    generator = torch.Generator().manual_seed(0)
    batch = sample_batch(streams, 16, 32, generator)
    assert batch.input_ids.shape == batch.targets.shape == (16, 32)
    assert batch.attention_mask.all()
    assert torch.equal(batch.input_ids[:, 1:], batch.targets[:, :-1])
    for row, language in zip(batch.input_ids, batch.language_ids, strict=True):
        stream = bytes(streams.streams[language].tolist())
        assert bytes(row.tolist()) in stream
    again = sample_batch(streams, 16, 32, torch.Generator().manual_seed(0))
    assert torch.equal(again.input_ids, batch.input_ids)


def test_tiny_language_still_fills_a_window():
    streams = LanguageStreams.from_samples([Sample("hi", "x", "x#0")], ["x"])
    batch = sample_batch(streams, 2, 8, torch.Generator().manual_seed(0))
    assert batch.input_ids.shape == (2, 8)


def test_eval_batches_cover_the_streams_with_right_padding():
    samples = [Sample("a" * 25, "x", "x#0"), Sample("b" * 7, "y", "y#0")]
    streams = LanguageStreams.from_samples(samples, ["x", "y"])
    batches = eval_batches(streams, batch_size=2, seq_len=10)
    mask = torch.cat([b.attention_mask for b in batches])
    targets = torch.cat([b.targets for b in batches])
    languages = torch.cat([b.language_ids for b in batches])
    assert languages.tolist() == [0, 0, 0, 1]
    assert mask.sum(dim=1).tolist() == [10, 10, 4, 6]  # 25 bytes -> 24 targets; 7 -> 6
    assert (targets[~mask] == IGNORE_INDEX).all() and (targets[mask] >= 0).all()
    for row in mask:  # right padding: real tokens first
        assert torch.equal(row, torch.sort(row.int(), descending=True).values.bool())
    capped = eval_batches(streams, 8, 10, max_windows_per_language=1)
    assert capped[0].language_ids.tolist() == [0, 1]
