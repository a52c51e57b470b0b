from __future__ import annotations

import collections
import gzip
import json

from seq2vae.data.synthetic import FACTORS, generate_corpus, write_jsonl


def test_corpus_is_seeded_and_carries_valid_factors():
    first = list(generate_corpus(300, seed=3))
    assert first == list(generate_corpus(300, seed=3))
    assert first != list(generate_corpus(300, seed=4))
    for example in first:
        assert set(example) == {"text", *FACTORS}
        for factor, values in FACTORS.items():
            assert example[factor] in values
        assert example["text"][0].isupper() and example["text"].endswith(".")


def test_factors_shape_the_text():
    corpus = list(generate_corpus(2000, seed=0))
    words = lambda e: len(e["text"].split())  # noqa: E731
    mean_words = {
        length: sum(words(e) for e in corpus if e["length"] == length) / sum(e["length"] == length for e in corpus)
        for length in FACTORS["length"]
    }
    assert mean_words["short"] < mean_words["medium"] < mean_words["long"]
    assert all(" will " in f" {e['text'].lower()} " for e in corpus if e["tense"] == "future")
    assert not any(" will " in f" {e['text'].lower()} " for e in corpus if e["tense"] == "past")
    # Every factor value occurs, roughly uniformly.
    for factor, values in FACTORS.items():
        counts = collections.Counter(e[factor] for e in corpus)
        assert set(counts) == set(values)
        assert min(counts.values()) > 0.5 * len(corpus) / len(values)


def test_vocabulary_is_rich_and_sentences_rarely_repeat():
    corpus = list(generate_corpus(2000, seed=0))
    vocabulary = {word.strip(".").lower() for e in corpus for word in e["text"].split()}
    assert len(vocabulary) > 300
    assert len({e["text"] for e in corpus}) > 0.95 * len(corpus)


def test_write_jsonl_plain_and_gzip(tmp_path):
    plain = write_jsonl(tmp_path / "c.jsonl", 50, seed=1)
    packed = write_jsonl(tmp_path / "c.jsonl.gz", 50, seed=1)
    rows = [json.loads(line) for line in plain.read_text().splitlines()]
    assert rows == list(generate_corpus(50, seed=1))
    with gzip.open(packed, "rt") as handle:
        assert [json.loads(line) for line in handle] == rows
