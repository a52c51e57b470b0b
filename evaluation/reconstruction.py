"""Reconstruction quality of decoded sentences: token accuracy, exact match, corpus BLEU.

Sequences are plain Python lists (token ids or words), so the functions serve ids and text alike.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence


def token_accuracy(hypotheses: Sequence[Sequence], references: Sequence[Sequence]) -> tuple[int, int]:
    """Position-wise matches against the reference: (correct, total reference tokens).

    Position t counts as correct when hypothesis[t] == reference[t]; a short hypothesis misses the
    rest, extra hypothesis tokens are not counted (exact match and BLEU penalise them).
    """
    _check_pairs(hypotheses, references)
    correct = sum(sum(h == r for h, r in zip(hyp, ref)) for hyp, ref in zip(hypotheses, references))
    return correct, sum(len(ref) for ref in references)


def exact_match(hypotheses: Sequence[Sequence], references: Sequence[Sequence]) -> int:
    """Number of hypotheses identical to their reference."""
    _check_pairs(hypotheses, references)
    return sum(list(hyp) == list(ref) for hyp, ref in zip(hypotheses, references))


def _ngrams(sequence: Sequence, order: int) -> Counter:
    return Counter(tuple(sequence[i : i + order]) for i in range(len(sequence) - order + 1))


def corpus_bleu(hypotheses: Sequence[Sequence], references: Sequence[Sequence], max_order: int = 4) -> float:
    """Corpus BLEU (Papineni et al. 2002), one reference per hypothesis, no smoothing, in [0, 100].

    Clipped n-gram counts for n = 1..max_order are summed over the corpus, the geometric mean of the
    precisions is taken, times the brevity penalty exp(min(0, 1 - ref_len / hyp_len)).
    Any zero precision gives 0 (standard corpus BLEU).
    """
    _check_pairs(hypotheses, references)
    matches = [0] * max_order
    possible = [0] * max_order
    hyp_length = ref_length = 0
    for hyp, ref in zip(hypotheses, references):
        hyp_length += len(hyp)
        ref_length += len(ref)
        for order in range(1, max_order + 1):
            hyp_counts = _ngrams(hyp, order)
            ref_counts = _ngrams(ref, order)
            matches[order - 1] += sum(min(count, ref_counts[gram]) for gram, count in hyp_counts.items())
            possible[order - 1] += max(len(hyp) - order + 1, 0)
    if hyp_length == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / p) for m, p in zip(matches, possible)) / max_order
    brevity_penalty = min(0.0, 1.0 - ref_length / hyp_length)
    return 100.0 * math.exp(log_precision + brevity_penalty)


def _check_pairs(hypotheses: Sequence, references: Sequence) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
