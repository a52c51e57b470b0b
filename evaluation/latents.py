"""The posterior means of a subset of the evaluated sentences, kept in the eval JSON for plots.

`seq2vae report` draws a 2-D PCA of mu coloured by a known factor (the synthetic corpus' topic,
sentiment, ...); that needs mu and the sentences' metadata, which the corpus-level metrics do not keep.
The first `max_points` sentences are kept (the set's own order, so the choice is the same on any
number of ranks), rounded to 4 decimals to keep the JSON small.
"""

from __future__ import annotations

import torch


def latent_sample(mu: torch.Tensor, samples: list[dict], max_points: int) -> dict | None:
    """{"mu": [n][Z] floats, "meta": [n] dicts or None} for the first n = min(N, max_points) sentences.

    Args:
        mu: [N,Z] posterior means in the order of `samples`.
        samples: the evaluated sentences (their optional "meta" dict holds the known factors).
    Returns: None when max_points is 0.
    """
    count = min(max_points, mu.shape[0])
    if count == 0:
        return None
    return {
        "mu": [[round(float(value), 4) for value in row] for row in mu[:count].tolist()],
        "meta": [samples[i].get("meta") for i in range(count)],
    }
