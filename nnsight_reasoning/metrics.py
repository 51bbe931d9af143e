"""Causal-effect metrics computed from clean and patched next-token scores.

All functions are elementwise over numpy arrays and work in float64. Names: the base prompt
p1 has answer r1, the source prompt p2 answer r2; P = probabilities on p1; P* = the same
after the intervention (a site's activation taken from p2, or, for the total effect, the
whole prompt replaced by p2).

Besides the paper's indirect effect (``stolfo_ie``), lm-arithmetic's notebooks plot the
variants below (``notebooks/notebooks_utils.py:119-137``, function ``compute_effects``); the
toolkit keeps their formulas and gives them descriptive names:

================================  =====================================  ========================
toolkit ``metric``                formula                                lm-arithmetic column
================================  =====================================  ========================
``stolfo_ie``                     see :func:`stolfo_ie`                  ``effect`` ("relative_diff")
``absolute``                      (P(r1) − P*(r1)) + (P*(r2) − P(r2))    ``effect_average_diff``
``source_increase``               P*(r2) − P(r2)                         ``effect_increase_p_res_alt``
``relative_source_increase``      (P*(r2) − P(r2)) / P(r2)               ``effect_relative_increase_p_res_alt``
``same_result``                   abs(P(r1) − P*(r1))                    ``effect_diff_int2``
``logit_diff``                    (l*(r2) − l*(r1)) − (l(r2) − l(r1))    (none; the circuits papers')
================================  =====================================  ========================

``absolute`` is a sum of the two changes, as in the repository (its column says "average").
``same_result`` is the measure the repository uses for same-result pairs (r1 = r2), where
the indirect effect's two terms describe one token.
"""
from __future__ import annotations

import numpy as np

METRICS: dict[str, str] = {
    "stolfo_ie": "indirect effect of Stolfo et al. 2023 (dimensionless; 0 = no effect)",
    "logit_diff": "change of logit(r2) - logit(r1) caused by the patch (logits)",
    "absolute": "(P(r1) - P*(r1)) + (P*(r2) - P(r2)), lm-arithmetic's absolute change (probability)",
    "source_increase": "P*(r2) - P(r2), the rise of the source answer's probability",
    "relative_source_increase": "(P*(r2) - P(r2)) / P(r2), the relative rise of the source answer's probability",
    "same_result": "|P(r1) - P*(r1)|, lm-arithmetic's effect for same-result pairs (r1 = r2)",
}
#: Metrics read from logits (units: logits); the others from probabilities (units: 1).
LOGIT_METRICS = ("logit_diff",)


def stolfo_ie(p_r1: np.ndarray, p_r2: np.ndarray, p_star_r1: np.ndarray, p_star_r2: np.ndarray) -> np.ndarray:
    """IE = ½ · [ (P*(r2) − P(r2)) / P(r2) + (P(r1) − P*(r1)) / P*(r1) ].

    P: probabilities on the base prompt p1 (answer r1); P*: the same with the site's
    activation taken from the source prompt p2 (answer r2). Stolfo, Belinkov & Sachan,
    "A Mechanistic Interpretation of Arithmetic Reasoning in Language Models", EMNLP 2023.
    With P* the probabilities on p2 itself, the same formula is the total effect.
    """
    p_r1, p_r2, p_star_r1, p_star_r2 = _f64(p_r1, p_r2, p_star_r1, p_star_r2)
    return 0.5 * ((p_star_r2 - p_r2) / p_r2 + (p_r1 - p_star_r1) / p_star_r1)


def logit_diff(l_r1: np.ndarray, l_r2: np.ndarray, l_star_r1: np.ndarray, l_star_r2: np.ndarray) -> np.ndarray:
    """(logit*(r2) − logit*(r1)) − (logit(r2) − logit(r1)); patched (*) minus clean."""
    l_r1, l_r2, l_star_r1, l_star_r2 = _f64(l_r1, l_r2, l_star_r1, l_star_r2)
    return (l_star_r2 - l_star_r1) - (l_r2 - l_r1)


def absolute(p_r1, p_r2, p_star_r1, p_star_r2) -> np.ndarray:
    """(P(r1) − P*(r1)) + (P*(r2) − P(r2)): how much probability moves from r1 to r2."""
    p_r1, p_r2, p_star_r1, p_star_r2 = _f64(p_r1, p_r2, p_star_r1, p_star_r2)
    return (p_r1 - p_star_r1) + (p_star_r2 - p_r2)


def source_increase(p_r1, p_r2, p_star_r1, p_star_r2) -> np.ndarray:
    """P*(r2) − P(r2)."""
    _, p_r2, _, p_star_r2 = _f64(p_r1, p_r2, p_star_r1, p_star_r2)
    return p_star_r2 - p_r2


def relative_source_increase(p_r1, p_r2, p_star_r1, p_star_r2) -> np.ndarray:
    """(P*(r2) − P(r2)) / P(r2)."""
    _, p_r2, _, p_star_r2 = _f64(p_r1, p_r2, p_star_r1, p_star_r2)
    return (p_star_r2 - p_r2) / p_r2


def same_result(p_r1, p_r2, p_star_r1, p_star_r2) -> np.ndarray:
    """|P(r1) − P*(r1)|."""
    p_r1, _, p_star_r1, _ = _f64(p_r1, p_r2, p_star_r1, p_star_r2)
    return np.abs(p_r1 - p_star_r1)


_FUNCTIONS = {"stolfo_ie": stolfo_ie, "logit_diff": logit_diff, "absolute": absolute,
              "source_increase": source_increase, "relative_source_increase": relative_source_increase,
              "same_result": same_result}


def effect(metric: str, log_probs: np.ndarray, logits: np.ndarray, log_probs_star: np.ndarray,
           logits_star: np.ndarray) -> np.ndarray:
    """``metric`` of clean scores (P) and intervened scores (P*): each argument is (n, 2), the
    columns r1 and r2 (log-probabilities or logits). Returns (n,) float64."""
    if metric in LOGIT_METRICS:
        a, b = np.asarray(logits, np.float64), np.asarray(logits_star, np.float64)
    else:
        a, b = np.exp(np.asarray(log_probs, np.float64)), np.exp(np.asarray(log_probs_star, np.float64))
    return _FUNCTIONS[metric](a[:, 0], a[:, 1], b[:, 0], b[:, 1])


def units(metric: str) -> str:
    return "logits" if metric in LOGIT_METRICS else "1"  # as every logit difference in the results


def _f64(*xs):
    return tuple(np.asarray(x, dtype=np.float64) for x in xs)
