"""A synthetic English-like corpus generated from known discrete latent factors.

Every sentence is drawn from a small grammar conditioned on four factors (see `FACTORS`):
- topic: which subjects, verbs, objects and places appear,
- sentiment: the adjectives, adverbs and closing remarks,
- tense: how every verb is conjugated (past, present, "will" future),
- length: how many clauses are joined (1, 2 or 3).
The factors are stored with each sentence, so the evaluation can measure how much of them a latent
space recovers (probes). The vocabulary (several hundred words) and the free choice of words within a
factor make reconstruction non-trivial while the factors stay recoverable. Generation is seeded and
streamed: any size, ~100k sentences/s, never held in memory.
"""

from __future__ import annotations

import functools
import gzip
import itertools
import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FACTORS: dict[str, list[str]] = {
    "topic": ["food", "sports", "travel", "technology", "music", "nature"],
    "sentiment": ["positive", "negative"],
    "tense": ["past", "present", "future"],
    "length": ["short", "medium", "long"],
}

CLAUSES_PER_LENGTH = {"short": 1, "medium": 2, "long": 3}

# The grammar's branch probabilities; generation and the exact ground truth below both read them.
P_SINGULAR_SUBJECT = 0.7  # "<determiner> <agent>", else a plural pronoun
P_ADVERB = 0.3
P_PLACE = 0.5
P_REMARK = 0.35  # a follow-up clause is a sentiment remark instead of a topic clause

# Per topic: agents (singular noun phrases without article), transitive verbs (base form), objects, places.
TOPIC_WORDS: dict[str, dict[str, list[str]]] = {
    "food": {
        "agents": ["chef", "baker", "waiter", "cook", "farmer", "critic", "grandmother", "student", "butcher", "host"],
        "verbs": ["cook", "taste", "serve", "bake", "order", "prepare", "eat", "share", "season", "buy"],
        "objects": ["soup", "bread", "pasta", "salad", "cake", "curry", "pie", "stew", "breakfast", "dinner",
                    "noodles", "cheese", "dessert", "sandwich", "omelette"],
        "places": ["in the kitchen", "at the market", "at the restaurant", "at the cafe", "by the oven",
                   "at the bakery"],
    },
    "sports": {
        "agents": ["coach", "player", "captain", "runner", "referee", "goalkeeper", "swimmer", "team", "fan",
                   "champion"],
        "verbs": ["win", "lose", "play", "train", "watch", "coach", "join", "finish", "practise", "score"],
        "objects": ["match", "race", "game", "final", "season", "tournament", "marathon", "league", "round",
                    "derby", "relay", "contest", "session", "drill", "title"],
        "places": ["at the stadium", "on the field", "in the gym", "at the track", "in the pool",
                   "on the court"],
    },
    "travel": {
        "agents": ["tourist", "pilot", "guide", "traveller", "driver", "sailor", "hiker", "family", "passenger",
                   "explorer"],
        "verbs": ["visit", "book", "explore", "reach", "plan", "leave", "cross", "find", "photograph", "describe"],
        "objects": ["city", "island", "hotel", "museum", "flight", "trip", "harbour", "village", "train",
                    "coastline", "castle", "border", "ferry", "resort", "journey"],
        "places": ["at the airport", "near the station", "on the road", "by the harbour", "abroad",
                   "in the old town"],
    },
    "technology": {
        "agents": ["engineer", "programmer", "designer", "startup", "researcher", "technician", "company",
                   "developer", "analyst", "gamer"],
        "verbs": ["build", "test", "design", "install", "update", "release", "repair", "debug", "launch",
                  "review"],
        "objects": ["app", "laptop", "server", "robot", "website", "phone", "network", "database", "chip",
                    "camera", "printer", "algorithm", "browser", "satellite", "keyboard"],
        "places": ["in the lab", "at the office", "in the data centre", "at the workshop", "online",
                   "at the conference"],
    },
    "music": {
        "agents": ["singer", "drummer", "pianist", "band", "composer", "violinist", "conductor", "choir", "rapper",
                   "guitarist"],
        "verbs": ["play", "write", "record", "perform", "compose", "rehearse", "sing", "hear", "practise",
                  "remix"],
        "objects": ["song", "album", "concert", "melody", "symphony", "ballad", "chorus", "track", "opera",
                    "anthem", "solo", "lullaby", "rhythm", "encore", "duet"],
        "places": ["on stage", "in the studio", "at the festival", "at the club", "in the hall",
                   "on the radio"],
    },
    "nature": {
        "agents": ["gardener", "ranger", "biologist", "fisherman", "beekeeper", "forester", "birdwatcher",
                   "shepherd", "botanist", "painter"],
        "verbs": ["plant", "water", "observe", "protect", "climb", "paint", "study", "discover", "follow",
                  "feed"],
        "objects": ["tree", "river", "meadow", "forest", "garden", "mountain", "lake", "flower", "valley",
                    "orchard", "hedge", "pond", "glacier", "trail", "field"],
        "places": ["in the woods", "by the river", "in the hills", "at dawn", "near the lake",
                   "in the park"],
    },
}

SENTIMENT_WORDS: dict[str, dict[str, list[str]]] = {
    "positive": {
        "adjectives": ["wonderful", "delightful", "excellent", "brilliant", "lovely", "superb", "charming",
                       "amazing", "fantastic", "pleasant", "splendid", "perfect", "beautiful", "great"],
        "adverbs": ["happily", "gladly", "proudly", "cheerfully", "eagerly", "gracefully", "warmly"],
        "remarks": ["it was a joy", "everyone smiled", "it felt great", "nobody wanted it to end",
                    "the mood was bright", "it was worth every minute"],
    },
    "negative": {
        "adjectives": ["terrible", "awful", "dreadful", "boring", "horrible", "disappointing", "miserable",
                       "poor", "ugly", "dull", "broken", "useless", "bad", "nasty"],
        "adverbs": ["sadly", "reluctantly", "angrily", "grimly", "wearily", "bitterly", "nervously"],
        "remarks": ["it was a mess", "everyone complained", "it felt wrong", "nobody enjoyed it",
                    "the mood was grim", "it was a waste of time"],
    },
}

DETERMINERS = ["the", "a", "my", "our", "their", "this", "that", "one"]
PRONOUNS_PLURAL = ["we", "they", "you", "I"]
CONNECTIVES = ["and", "but", "because", "while", "so", "although", "after", "before"]

IRREGULAR_PAST = {
    "eat": "ate", "buy": "bought", "win": "won", "lose": "lost", "leave": "left", "find": "found",
    "build": "built", "write": "wrote", "sing": "sang", "hear": "heard", "feed": "fed", "be": "was",
}


def _past(verb: str) -> str:
    if verb in IRREGULAR_PAST:
        return IRREGULAR_PAST[verb]
    if verb.endswith("e"):
        return verb + "d"
    if verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ied"
    if verb in ("plan", "debug"):  # consonant doubling after a short stressed vowel
        return verb + verb[-1] + "ed"
    return verb + "ed"


def _third_person(verb: str) -> str:
    if verb.endswith(("s", "sh", "ch", "x", "o")):
        return verb + "es"
    if verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


def _conjugate(verb: str, tense: str, singular: bool) -> str:
    if tense == "past":
        return _past(verb)
    if tense == "future":
        return "will " + verb
    return _third_person(verb) if singular else verb


def _clause(rng: random.Random, topic: str, sentiment: str, tense: str) -> str:
    words = TOPIC_WORDS[topic]
    feel = SENTIMENT_WORDS[sentiment]
    if rng.random() < P_SINGULAR_SUBJECT:
        subject, singular = f"{rng.choice(DETERMINERS)} {rng.choice(words['agents'])}", True
    else:
        subject, singular = rng.choice(PRONOUNS_PLURAL), False
    parts = [subject]
    if rng.random() < P_ADVERB:
        parts.append(rng.choice(feel["adverbs"]))
    parts.append(_conjugate(rng.choice(words["verbs"]), tense, singular))
    parts.append(f"the {rng.choice(feel['adjectives'])} {rng.choice(words['objects'])}")
    if rng.random() < P_PLACE:
        parts.append(rng.choice(words["places"]))
    return " ".join(parts)


def _remark(rng: random.Random, sentiment: str, tense: str) -> str:
    return _tensed_remark(rng.choice(SENTIMENT_WORDS[sentiment]["remarks"]), tense)


def _tensed_remark(remark: str, tense: str) -> str:
    """A remark (written in the past) in the given tense."""
    if tense == "present":
        remark = remark.replace(" was ", " is ").replace(" felt ", " feels ").replace(" complained", " complains")
        remark = remark.replace(" smiled", " smiles").replace(" wanted", " wants").replace(" enjoyed", " enjoys")
    elif tense == "future":
        remark = remark.replace(" was ", " will be ").replace(" felt ", " will feel ")
        remark = remark.replace(" complained", " will complain").replace(" smiled", " will smile")
        remark = remark.replace(" wanted", " will want").replace(" enjoyed", " will enjoy")
    return remark


def make_sentence(rng: random.Random, topic: str, sentiment: str, tense: str, length: str) -> str:
    """One sentence for the given factor values, using `rng` for every free choice."""
    clauses = [_clause(rng, topic, sentiment, tense)]
    for _ in range(CLAUSES_PER_LENGTH[length] - 1):
        follow = _remark(rng, sentiment, tense) if rng.random() < P_REMARK else _clause(rng, topic, sentiment, tense)
        clauses.append(f"{rng.choice(CONNECTIVES)} {follow}")
    text = " ".join(clauses)
    return text[0].upper() + text[1:] + "."


def generate_corpus(num_sentences: int, seed: int = 0) -> Iterator[dict]:
    """Yields `num_sentences` examples `{"text", "topic", "sentiment", "tense", "length"}`.

    Factor values are drawn uniformly and independently; the same seed gives the same corpus.
    """
    if num_sentences < 0:
        raise ValueError(f"num_sentences must be >= 0, got {num_sentences}")
    rng = random.Random(seed)
    for _ in range(num_sentences):
        yield draw_example(rng)


def draw_example(rng: random.Random) -> dict:
    """One example: factor values drawn uniformly and independently, then a sentence for them."""
    factors = {name: rng.choice(values) for name, values in FACTORS.items()}
    return {"text": make_sentence(rng, **factors), **factors}


def write_jsonl(path: str | Path, num_sentences: int, seed: int = 0) -> Path:
    """Writes `generate_corpus(num_sentences, seed)` as JSON lines (gzip-compressed if `path` ends in .gz)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as handle:
        for example in generate_corpus(num_sentences, seed):
            handle.write(json.dumps(example) + "\n")
    return path


# ---------------------------------------------------------------------------------------------- ground truth
# The corpus is ours, so its distribution is known exactly: the probability of any string, whether it
# is a sentence of the grammar and under which factors, and the entropy H(x). The parser below sums
# over every derivation of a string (it counts them too), so ambiguity would be accounted for rather
# than assumed away; `sentence_entropy` is the closed form, exact when every sentence has one
# derivation (tests/data/test_synthetic_truth.py checks both against the generator itself).
ClauseFactors = tuple[str, str, str]  # (topic, sentiment, tense): what one clause is conditioned on


class _Parses:
    """Partial parses: (probability, number of derivations, words left) alternatives."""

    def __init__(self, alternatives: list[tuple[float, int, tuple[str, ...]]]):
        self.alternatives = alternatives

    def then(self, step) -> _Parses:
        """Extends every alternative by `step(words) -> [(probability, words left)]`."""
        return _Parses(
            [(p * q, n, rest) for p, n, words in self.alternatives for q, rest in step(words) if q > 0]
        )

    def complete(self) -> tuple[float, int]:
        """(total probability, derivations) of the alternatives that used every word."""
        done = [(p, n) for p, n, words in self.alternatives if not words]
        return sum(p for p, _ in done), sum(n for _, n in done)


def _pick(options: list[str], probability: float):
    """A step choosing one of `options` (each may span several words) uniformly, times `probability`."""
    counts: dict[tuple[str, ...], int] = {}
    for option in options:
        counts[tuple(option.split())] = counts.get(tuple(option.split()), 0) + 1
    lengths = sorted({len(tokens) for tokens in counts})
    share = probability / len(options)

    def step(words: tuple[str, ...]) -> list[tuple[float, tuple[str, ...]]]:
        return [(share * counts[words[:n]], words[n:]) for n in lengths if n <= len(words) and words[:n] in counts]
    return step


def _optional(options: list[str], probability: float):
    """A step that takes one of `options` with `probability`, or nothing."""
    chosen = _pick(options, probability)
    return lambda words: [(1.0 - probability, words), *chosen(words)]


@functools.cache
def _clause_steps(factors: ClauseFactors) -> list[list]:
    """Per subject kind (singular, plural), the steps `_clause` takes, as parser steps."""
    topic, sentiment, tense = factors
    vocabulary, feel = TOPIC_WORDS[topic], SENTIMENT_WORDS[sentiment]
    singular = [f"{d} {a}" for d in DETERMINERS for a in vocabulary["agents"]]
    return [
        [
            _pick(subjects, probability),
            _optional(feel["adverbs"], P_ADVERB),
            _pick([_conjugate(verb, tense, is_singular) for verb in vocabulary["verbs"]], 1.0),
            _pick(["the"], 1.0),
            _pick(feel["adjectives"], 1.0),
            _pick(vocabulary["objects"], 1.0),
            _optional(vocabulary["places"], P_PLACE),
        ]
        for subjects, probability, is_singular in (
            (singular, P_SINGULAR_SUBJECT, True), (PRONOUNS_PLURAL, 1.0 - P_SINGULAR_SUBJECT, False),
        )
    ]


def _clause_probability(words: tuple[str, ...], factors: ClauseFactors) -> tuple[float, int]:
    """p(words | factors) of one clause as `_clause` draws it, and its number of derivations."""
    topic, sentiment, _ = factors
    # Every clause names one of its topic's objects and one of its sentiment's adjectives: a cheap
    # necessary condition that skips most factor values before parsing.
    present = set(words)
    if present.isdisjoint(TOPIC_WORDS[topic]["objects"]) or present.isdisjoint(SENTIMENT_WORDS[sentiment]["adjectives"]):
        return 0.0, 0
    total, derivations = 0.0, 0
    for steps in _clause_steps(factors):
        parses = _Parses([(1.0, 1, words)])
        for step in steps:
            parses = parses.then(step)
        p, n = parses.complete()
        total, derivations = total + p, derivations + n
    return total, derivations


def _remark_probability(words: tuple[str, ...], sentiment: str, tense: str) -> tuple[float, int]:
    remarks = [_tensed_remark(r, tense) for r in SENTIMENT_WORDS[sentiment]["remarks"]]
    matches = sum(tuple(r.split()) == words for r in remarks)
    return matches / len(remarks), matches


@dataclass(frozen=True)
class SentenceParse:
    """What the grammar says about one string.

    grammatical: the generator can produce it (p(x) > 0).
    log_prob: exact log p(x) under `generate_corpus` (-inf when not grammatical), nats.
    factors: the most probable factor values given x (a dict like `FACTORS`' keys), None if not grammatical.
    derivations: how many derivations produce x (1 for every sentence of this grammar).
    clause_factors: per clause (split at connectives), the (topic, sentiment, tense) under which it is a
        clause or a remark of the grammar; an empty list marks a clause no factors produce.
    well_formed: every clause parses under some factors, possibly different ones per clause.
    consistent: well formed and one (topic, sentiment, tense) explains every clause; a well-formed
        but inconsistent string mixes factors (say a food clause joined to a music clause).
    """

    grammatical: bool
    log_prob: float
    factors: dict[str, str] | None
    derivations: int
    clause_factors: list[list[ClauseFactors]]
    well_formed: bool
    consistent: bool




def _body_words(text: str) -> list[tuple[str, ...]]:
    """The word sequences whose capitalised form plus "." is exactly `text` (none when it is not so formed)."""
    if not text.endswith(".") or len(text) < 2:
        return []
    body = text[:-1]
    candidates = {body[0].lower() + body[1:], body}  # "I ..." keeps its capital; "The ..." was "the ..."
    found = []
    for candidate in candidates:
        words = tuple(candidate.split(" "))
        if candidate[0].upper() + candidate[1:] == body and all(words):
            found.append(words)
    return found


def _split_at_connectives(words: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The clauses between connectives (connective words occur nowhere else in the grammar)."""
    clauses, current = [], []
    for word in words:
        if word in CONNECTIVES:
            clauses.append(tuple(current))
            current = []
        else:
            current.append(word)
    clauses.append(tuple(current))
    return clauses


def parse_sentence(text: str) -> SentenceParse:
    """Exact ground truth for one string: grammatical?, log p(x), factors, clause-level factors.

    The string must be exactly as `generate_corpus` writes sentences (single spaces, first letter
    capitalised, final "."); normalise decoded text first (e.g. `" ".join(text.split())`).
    """
    total, derivations = 0.0, 0
    best: tuple[float, dict[str, str] | None] = (0.0, None)
    clause_factors: list[list[ClauseFactors]] = []  # of the candidate spelling that parses best
    prior = 1.0 / math.prod(len(values) for values in FACTORS.values())
    all_factors = list(itertools.product(FACTORS["topic"], FACTORS["sentiment"], FACTORS["tense"]))
    length_of_clauses = {CLAUSES_PER_LENGTH[name]: name for name in FACTORS["length"]}
    for words in _body_words(text):
        clauses = _split_at_connectives(words)
        length = length_of_clauses.get(len(clauses))
        first = {f: _clause_probability(clauses[0], f) for f in all_factors}
        follows = []
        for clause in clauses[1:]:
            follow = {}
            for f in all_factors:
                p_clause, n_clause = _clause_probability(clause, f)
                p_remark, n_remark = _remark_probability(clause, f[1], f[2])
                follow[f] = ((1 - P_REMARK) * p_clause + P_REMARK * p_remark, n_clause + n_remark)
            follows.append(follow)
        candidate_factors = [[f for f, (p, _) in options.items() if p > 0] for options in [first, *follows]]
        if sum(map(bool, candidate_factors)) > sum(map(bool, clause_factors)):
            clause_factors = candidate_factors
        if length is None:
            continue
        for f in all_factors:
            p, n = first[f]
            for follow in follows:
                p, n = p * follow[f][0] / len(CONNECTIVES), n * follow[f][1]
            if p > 0:
                total, derivations = total + prior * p, derivations + n
                if p > best[0]:
                    best = (p, dict(zip(("topic", "sentiment", "tense"), f), length=length))
    well_formed = bool(clause_factors) and all(clause_factors)
    shared = set(clause_factors[0]).intersection(*clause_factors[1:]) if well_formed else set()
    return SentenceParse(
        grammatical=total > 0,
        log_prob=math.log(total) if total > 0 else -math.inf,
        factors=best[1],
        derivations=derivations,
        clause_factors=clause_factors,
        well_formed=well_formed,
        consistent=well_formed and bool(shared),
    )


def sentence_log_prob(text: str) -> float:
    """Exact log p(x) of a string under `generate_corpus` (nats; -inf for strings it never writes)."""
    return parse_sentence(text).log_prob


def is_sentence(text: str) -> bool:
    """Whether `generate_corpus` can write exactly this string."""
    return parse_sentence(text).grammatical


def _bernoulli_entropy(p: float) -> float:
    return -sum(q * math.log(q) for q in (p, 1.0 - p) if q > 0)


def clause_entropy(topic: str, sentiment: str) -> float:
    """H of one clause given its factors, in nats (the tense changes word forms, not the choices)."""
    vocabulary, feel = TOPIC_WORDS[topic], SENTIMENT_WORDS[sentiment]
    subject = _bernoulli_entropy(P_SINGULAR_SUBJECT) + P_SINGULAR_SUBJECT * math.log(
        len(DETERMINERS) * len(vocabulary["agents"])
    ) + (1 - P_SINGULAR_SUBJECT) * math.log(len(PRONOUNS_PLURAL))
    adverb = _bernoulli_entropy(P_ADVERB) + P_ADVERB * math.log(len(feel["adverbs"]))
    place = _bernoulli_entropy(P_PLACE) + P_PLACE * math.log(len(vocabulary["places"]))
    return (
        subject + adverb + math.log(len(vocabulary["verbs"])) + math.log(len(feel["adjectives"]))
        + math.log(len(vocabulary["objects"])) + place
    )


def conditional_entropy(topic: str, sentiment: str, tense: str, length: str) -> float:
    """H(x | factors) in nats: the free word choices of a sentence with these factor values."""
    del tense  # every tense spells each choice differently but offers the same choices
    follow = (
        math.log(len(CONNECTIVES)) + _bernoulli_entropy(P_REMARK)
        + P_REMARK * math.log(len(SENTIMENT_WORDS[sentiment]["remarks"]))
        + (1 - P_REMARK) * clause_entropy(topic, sentiment)
    )
    return clause_entropy(topic, sentiment) + (CLAUSES_PER_LENGTH[length] - 1) * follow


def factor_entropy() -> float:
    """H(factors) in nats: the factors are uniform and independent (log 108 for this corpus)."""
    return sum(math.log(len(values)) for values in FACTORS.values())


def sentence_entropy() -> float:
    """H(x) of `generate_corpus`, nats per sentence: H(factors) + E_factors H(x | factors).

    Exact because every sentence has a single derivation, so x determines its factors and choices.
    It bounds what any code z can carry about x: I(x; z) <= H(x).
    """
    combinations = [dict(zip(FACTORS, values)) for values in itertools.product(*FACTORS.values())]
    return factor_entropy() + sum(conditional_entropy(**f) for f in combinations) / len(combinations)
