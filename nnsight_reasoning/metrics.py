"""Causal-effect metrics computed from clean and patched next-token scores.

All functions are elementwise over numpy arrays and work in float64.
"""
from __future__ import annotations

import numpy as np

METRICS: dict[str, str] = {
    "stolfo_ie": "indirect effect of Stolfo et al. 2023 (dimensionless; 0 = no effect)",
    "logit_diff": "change of logit(r2) - logit(r1) caused by the patch (nats)",
}


def stolfo_ie(p_r1: np.ndarray, p_r2: np.ndarray, p_star_r1: np.ndarray, p_star_r2: np.ndarray) -> np.ndarray:
    """IE = ½ · [ (P*(r2) − P(r2)) / P(r2) + (P(r1) − P*(r1)) / P*(r1) ].

    P: probabilities on the base prompt p1 (answer r1); P*: the same with the site's
    activation taken from the source prompt p2 (answer r2). Stolfo, Belinkov & Sachan,
    "A Mechanistic Interpretation of Arithmetic Reasoning in Language Models", EMNLP 2023.
    """
    p_r1, p_r2, p_star_r1, p_star_r2 = (np.asarray(x, dtype=np.float64) for x in (p_r1, p_r2, p_star_r1, p_star_r2))
    return 0.5 * ((p_star_r2 - p_r2) / p_r2 + (p_r1 - p_star_r1) / p_star_r1)


def logit_diff(l_r1: np.ndarray, l_r2: np.ndarray, l_star_r1: np.ndarray, l_star_r2: np.ndarray) -> np.ndarray:
    """(logit*(r2) − logit*(r1)) − (logit(r2) − logit(r1)); patched (*) minus clean."""
    l_r1, l_r2, l_star_r1, l_star_r2 = (np.asarray(x, dtype=np.float64) for x in (l_r1, l_r2, l_star_r1, l_star_r2))
    return (l_star_r2 - l_star_r1) - (l_r2 - l_r1)
