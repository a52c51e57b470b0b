"""Evaluation: metric functions on tensors, the harness driver, and `seq2vae eval`.

The metric functions need no model; `seq2vae.evaluation.harness` feeds a Seq2SeqVAE through them
(`evaluate` for the full harness, `validate` for training's periodic validation). Nothing here
imports DeepSpeed. The names below are the package's API: training imports only these.
"""

from .harness import EvalConfig, check_estimator_settings, evaluate, validate
from .metrics import (
    ActiveUnits,
    MutualInformation,
    active_units,
    count_predicted_tokens,
    count_words,
    gaussian_kl,
    gaussian_kl_per_dim,
    iw_log_likelihood,
    log_normal,
    log_standard_normal,
    mutual_information,
    perplexity,
)
from .placement import eval_batch
from .probe import ProbeResult, linear_probe
from .reconstruction import corpus_bleu, exact_match, token_accuracy

__all__ = [
    "ActiveUnits",
    "EvalConfig",
    "MutualInformation",
    "ProbeResult",
    "active_units",
    "check_estimator_settings",
    "corpus_bleu",
    "count_predicted_tokens",
    "count_words",
    "eval_batch",
    "evaluate",
    "exact_match",
    "gaussian_kl",
    "gaussian_kl_per_dim",
    "iw_log_likelihood",
    "linear_probe",
    "log_normal",
    "log_standard_normal",
    "mutual_information",
    "perplexity",
    "token_accuracy",
    "validate",
]
