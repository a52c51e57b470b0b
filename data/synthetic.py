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

import gzip
import json
import random
from collections.abc import Iterator
from pathlib import Path

FACTORS: dict[str, list[str]] = {
    "topic": ["food", "sports", "travel", "technology", "music", "nature"],
    "sentiment": ["positive", "negative"],
    "tense": ["past", "present", "future"],
    "length": ["short", "medium", "long"],
}

CLAUSES_PER_LENGTH = {"short": 1, "medium": 2, "long": 3}

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
    if rng.random() < 0.7:
        subject, singular = f"{rng.choice(DETERMINERS)} {rng.choice(words['agents'])}", True
    else:
        subject, singular = rng.choice(PRONOUNS_PLURAL), False
    parts = [subject]
    if rng.random() < 0.3:
        parts.append(rng.choice(feel["adverbs"]))
    parts.append(_conjugate(rng.choice(words["verbs"]), tense, singular))
    parts.append(f"the {rng.choice(feel['adjectives'])} {rng.choice(words['objects'])}")
    if rng.random() < 0.5:
        parts.append(rng.choice(words["places"]))
    return " ".join(parts)


def _remark(rng: random.Random, sentiment: str, tense: str) -> str:
    remark = rng.choice(SENTIMENT_WORDS[sentiment]["remarks"])
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
        follow = _remark(rng, sentiment, tense) if rng.random() < 0.35 else _clause(rng, topic, sentiment, tense)
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
        factors = {name: rng.choice(values) for name, values in FACTORS.items()}
        yield {"text": make_sentence(rng, **factors), **factors}


def write_jsonl(path: str | Path, num_sentences: int, seed: int = 0) -> Path:
    """Writes `generate_corpus(num_sentences, seed)` as JSON lines (gzip-compressed if `path` ends in .gz)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as handle:
        for example in generate_corpus(num_sentences, seed):
            handle.write(json.dumps(example) + "\n")
    return path
