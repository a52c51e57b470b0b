"""The synthetic corpus' ground truth: the grammar checker, exact log p(x) and H(x), checked against the generator."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from seq2vae.data import synthetic
from seq2vae.data.synthetic import (
    CONNECTIVES,
    DETERMINERS,
    FACTORS,
    PRONOUNS_PLURAL,
    SENTIMENT_WORDS,
    TOPIC_WORDS,
    draw_example,
    generate_corpus,
    is_sentence,
    parse_sentence,
    sentence_entropy,
)


@pytest.fixture(scope="module")
def corpus() -> list[dict]:
    return list(generate_corpus(3000, seed=11))


@pytest.fixture(scope="module")
def parses(corpus) -> list:
    return [parse_sentence(example["text"]) for example in corpus]


def test_the_checker_accepts_every_generated_sentence_with_its_factors(corpus, parses):
    for example, parse in zip(corpus, parses):
        assert parse.grammatical and parse.consistent and parse.derivations == 1, example
        assert parse.factors == {name: example[name] for name in FACTORS}, example
        assert parse.log_prob < 0


def _words(text: str) -> list[str]:
    return text[:-1].split(" ")


def _sentence(words: list[str]) -> str:
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


def test_the_checker_rejects_corrupted_sentences(corpus):
    rng = random.Random(0)
    objects = {word for words in TOPIC_WORDS.values() for word in words["objects"]}
    adjectives = {word for feel in SENTIMENT_WORDS.values() for word in feel["adjectives"]}
    for example in corpus[:400]:
        words = [w.lower() if w != "I" else w for w in _words(example["text"])]
        # A swap of two different adjacent words (the adjective and its object always qualify).
        position = next(i for i, w in enumerate(words) if w in adjectives)
        swapped = words.copy()
        swapped[position], swapped[position + 1] = swapped[position + 1], swapped[position]
        assert not is_sentence(_sentence(swapped)), swapped
        # A random adjacent swap, unless it happens to leave the words unchanged.
        i = rng.randrange(len(words) - 1)
        if words[i] != words[i + 1]:
            shuffled = words.copy()
            shuffled[i], shuffled[i + 1] = shuffled[i + 1], shuffled[i]
            assert not is_sentence(_sentence(shuffled)), shuffled
        # Deleting a word every clause needs: its object.
        deleted = words.copy()
        del deleted[next(i for i, w in enumerate(words) if w in objects)]
        assert not is_sentence(_sentence(deleted)), deleted
        # Form: no final stop, or a lower-case start.
        assert not is_sentence(example["text"][:-1])
        assert not is_sentence(example["text"][0].lower() + example["text"][1:]) or example["text"].startswith("I ")


def test_mixed_topic_clauses_are_well_formed_but_not_sentences(corpus):
    by_factors: dict[tuple, list[str]] = {}
    for example in corpus:
        if example["length"] == "short":
            by_factors.setdefault((example["topic"], example["sentiment"], example["tense"]), []).append(example["text"])
    checked = 0
    for (topic, sentiment, tense), texts in by_factors.items():
        other_topic = next(t for t in FACTORS["topic"] if t != topic)
        others = by_factors.get((other_topic, sentiment, tense))
        if not others:
            continue
        second = others[0][:-1]
        second = second[0].lower() + second[1:] if not second.startswith("I ") else second
        mixed = f"{texts[0][:-1]} and {second}."
        parse = parse_sentence(mixed)
        assert parse.well_formed and not parse.consistent and not parse.grammatical, mixed
        assert parse.log_prob == -math.inf and parse.factors is None
        assert [{f[0] for f in clause} for clause in parse.clause_factors] == [{topic}, {other_topic}]
        checked += 1
    assert checked >= 20


def test_connective_words_occur_nowhere_else_so_clauses_split_unambiguously():
    other_words = set(DETERMINERS) | set(PRONOUNS_PLURAL)
    for words in TOPIC_WORDS.values():
        other_words |= {w for phrases in words.values() for phrase in phrases for w in phrase.split()}
    for feel in SENTIMENT_WORDS.values():
        other_words |= {w for phrases in feel.values() for phrase in phrases for w in phrase.split()}
    assert other_words.isdisjoint(CONNECTIVES)


def test_entropy_closed_form_agrees_with_the_mean_exact_nll_of_generated_sentences(parses):
    # E_x[-log p(x)] over the generator's own sentences estimates H(x); if the checker's probabilities
    # were off, the mean would exceed H by KL(generator || checker).
    nll = [-parse.log_prob for parse in parses]
    standard_error = statistics.stdev(nll) / math.sqrt(len(nll))
    assert abs(statistics.mean(nll) - sentence_entropy()) < 4 * standard_error, (statistics.mean(nll), standard_error)
    assert 31.0 < sentence_entropy() < 33.0  # the "about 32 nats"


# ------------------------------------------------------------------------------------ a small grammar, enumerated
class _Branch:
    """What `rng.random()` returns while enumerating: comparing it with a threshold p takes one branch."""

    def __init__(self, rng: _EnumeratingRandom):
        self.rng = rng

    def __lt__(self, threshold: float) -> bool:
        taken = self.rng.decide(2) == 0
        self.rng.probability *= threshold if taken else 1.0 - threshold
        return taken


class _EnumeratingRandom:
    """Replays a path of decisions through the generator, extending it with first choices."""

    def __init__(self, path: list[int]):
        self.path, self.arities, self.position, self.probability = path, [], 0, 1.0

    def decide(self, arity: int) -> int:
        if self.position == len(self.path):
            self.path.append(0)
        self.arities.append(arity)
        self.position += 1
        return self.path[self.position - 1]

    def random(self) -> _Branch:
        return _Branch(self)

    def choice(self, options):
        self.probability /= len(options)
        return options[self.decide(len(options))]


def _every_derivation() -> list[tuple[str, float]]:
    """(text, probability) of every derivation of `draw_example`, by depth-first replay."""
    derivations, path = [], []
    while True:
        rng = _EnumeratingRandom(path)
        derivations.append((draw_example(rng)["text"], rng.probability))
        path = path[: rng.position]
        while path and path[-1] == rng.arities[len(path) - 1] - 1:
            path.pop()
        if not path:
            return derivations
        path[-1] += 1


@pytest.fixture
def small_grammar(monkeypatch):
    """The real grammar code over a vocabulary small enough to enumerate every sentence."""
    monkeypatch.setattr(synthetic, "FACTORS", {
        "topic": ["food", "sports"], "sentiment": ["positive", "negative"], "tense": ["past", "present"],
        "length": ["short", "medium", "long"],
    })
    monkeypatch.setattr(synthetic, "TOPIC_WORDS", {
        "food": {"agents": ["chef"], "verbs": ["eat"], "objects": ["soup"], "places": ["in the kitchen"]},
        "sports": {"agents": ["coach"], "verbs": ["win"], "objects": ["match"], "places": ["abroad"]},
    })
    monkeypatch.setattr(synthetic, "SENTIMENT_WORDS", {
        "positive": {"adjectives": ["great"], "adverbs": ["gladly"], "remarks": ["it was a joy"]},
        "negative": {"adjectives": ["bad"], "adverbs": ["sadly"], "remarks": ["everyone complained"]},
    })
    monkeypatch.setattr(synthetic, "DETERMINERS", ["the"])
    monkeypatch.setattr(synthetic, "PRONOUNS_PLURAL", ["we"])
    monkeypatch.setattr(synthetic, "CONNECTIVES", ["and", "but"])
    synthetic._clause_steps.cache_clear()
    yield
    synthetic._clause_steps.cache_clear()


def test_exact_probabilities_sum_to_one_and_entropy_two_ways_agree_on_an_enumerable_grammar(small_grammar):
    by_text: dict[str, float] = {}
    for text, probability in _every_derivation():
        by_text[text] = by_text.get(text, 0.0) + probability
    assert len(by_text) > 1000
    assert math.fsum(by_text.values()) == pytest.approx(1.0, abs=1e-12)  # the enumeration is complete
    for text, probability in by_text.items():
        parse = synthetic.parse_sentence(text)
        assert parse.grammatical and parse.log_prob == pytest.approx(math.log(probability), abs=1e-9), text
    entropy = -math.fsum(p * math.log(p) for p in by_text.values())
    assert synthetic.sentence_entropy() == pytest.approx(entropy, abs=1e-9)
    assert not synthetic.is_sentence("The chef eats the great match.")  # a sports object in a food clause
