"""k-th smallest number in a list (the multi-step reasoning task of Hou et al. 2023).

"Numbers : 12 5 30 7 . The second smallest is" -> "7". Numbers are distinct, 0..max_n.
"""
from __future__ import annotations

import random
from typing import Any

from .base import Example, TaskInfo, check_range, register
from .words import ORDINALS


def sample_kth(rng: random.Random, length: int, k: int, max_n: int) -> Example:
    numbers = rng.sample(range(max_n + 1), length)
    answer = sorted(numbers)[k - 1]
    prompt = f"Numbers : {' '.join(map(str, numbers))} . The {ORDINALS[k - 1]} smallest is"
    return Example(prompt, str(answer))


def kth_smallest_examples(n: int = 200, seed: int = 0, tokenizer: Any | None = None,
                          length: int = 5, k: int = 2, max_n: int = 99) -> list[Example]:
    """``n`` k-th-smallest prompts: ``length`` distinct numbers in 0..max_n, query the k-th."""
    check_range("length", length, 2, 12)
    check_range("k", k, 1, min(length, len(ORDINALS)))
    check_range("max_n", max_n, length - 1, 99)
    rng = random.Random(seed)
    return [sample_kth(rng, length, k, max_n) for _ in range(n)]


register(TaskInfo(
    "kth_smallest", "k-th smallest number in a list (Hou et al. 2023)", None, kth_smallest_examples,
    {"length": (5, "numbers in the list"), "k": (2, "which smallest to ask for (1 = smallest)"),
     "max_n": (99, "numbers are distinct, 0..max_n"), "seed": (0, "random seed")}))
