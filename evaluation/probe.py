"""Linear probes: how well a linear classifier on the posterior mean predicts a discrete factor.

Multinomial logistic regression fitted full-batch with L-BFGS (deterministic), on standardised mu,
with a held-out split drawn from a seed; reported beside the majority-class baseline so a probe that
learned nothing is visible as accuracy ~ baseline.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass

import torch

# A factor is probed when it has between 2 and this many distinct values (else it is not "discrete").
MAX_PROBE_CLASSES = 50


@dataclass
class ProbeResult:
    accuracy: float  # held-out accuracy of the linear probe on mu
    majority_baseline: float  # held-out accuracy of always predicting the training set's majority class
    num_classes: int
    num_train: int
    num_test: int

    def to_dict(self) -> dict:
        return asdict(self)


def linear_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    max_iterations: int = 100,
    weight_decay: float = 1e-3,
) -> ProbeResult:
    """Fits softmax(features @ W + b) on a training split and scores the held-out split.

    Args:
        features: [N, Z] (e.g. mu).
        labels: [N] int64 class indices in [0, C).
        test_fraction: share of the N items held out, chosen by a permutation seeded with `seed`.
        weight_decay: L2 penalty on W (keeps separable data from diverging).
    Returns: ProbeResult. Raises ValueError when either split would be empty or there is one class.
    """
    num_items = features.shape[0]
    num_test = int(round(num_items * test_fraction))
    if num_test < 1 or num_items - num_test < 2:
        raise ValueError(f"a linear probe needs more items: N={num_items} leaves {num_test} held out")
    num_classes = int(labels.max()) + 1
    if num_classes < 2:
        raise ValueError("a linear probe needs at least 2 classes")
    order = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed))
    test_index, train_index = order[:num_test], order[num_test:]
    x = features.double()
    mean = x[train_index].mean(0)
    std = x[train_index].std(0).clamp_min(1e-8)
    x = (x - mean) / std
    weight = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = x[train_index] @ weight + bias
        loss = torch.nn.functional.cross_entropy(logits, labels[train_index]) + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        predictions = (x[test_index] @ weight + bias).argmax(-1)
    accuracy = float((predictions == labels[test_index]).double().mean())
    majority_class = int(torch.bincount(labels[train_index], minlength=num_classes).argmax())
    baseline = float((labels[test_index] == majority_class).double().mean())
    return ProbeResult(accuracy, baseline, num_classes, len(train_index), num_test)


def discrete_factors(metadata: Sequence[dict | None]) -> tuple[dict[str, list[Hashable]], dict[str, str]]:
    """Splits metadata fields into probe-able discrete factors and skipped ones (with the reason).

    A field is a factor when every item has it, its values are str/int/bool, and it takes between 2
    and MAX_PROBE_CLASSES distinct values. Returns ({field: values per item}, {field: why skipped}).
    """
    fields: dict[str, list] = {}
    for item in metadata:
        for key in (item or {}):
            fields.setdefault(key, [])
    factors, skipped = {}, {}
    for key in sorted(fields):
        values = [(item or {}).get(key) for item in metadata]
        if any(v is None for v in values):
            skipped[key] = "missing on some sentences"
        elif not all(isinstance(v, (str, int, bool)) for v in values):
            skipped[key] = "values are not str/int/bool"
        elif not 2 <= len(set(values)) <= MAX_PROBE_CLASSES:
            skipped[key] = f"{len(set(values))} distinct values (probe needs 2..{MAX_PROBE_CLASSES})"
        else:
            factors[key] = values
    return factors, skipped


def encode_labels(values: Sequence[Hashable]) -> tuple[torch.Tensor, list[Hashable]]:
    """Maps values to class indices ordered by value frequency then repr (deterministic). -> ([N], classes)."""
    counts = Counter(values)
    classes = sorted(counts, key=lambda v: (-counts[v], repr(v)))
    index = {value: i for i, value in enumerate(classes)}
    return torch.tensor([index[v] for v in values], dtype=torch.long), classes
