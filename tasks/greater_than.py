"""Greater-than (Hanna et al. 2023, as Tigges et al. 2024 track it over training).

"The war lasted from the year 1732 to the year 17" -> any year after 32 ("33" … "99").

Following circuits-over-time's ``data/greater_than_dataset.py`` (``generate_real_sentence``,
``get_valid_years``; the ``XX01`` corruption at :67-72): centuries 11..17, the start year's
two last digits YY in 02..98 (drawn uniformly here; the repository cycles through them), a
noun from a list of 16 (the repository's ``default_nouns`` has ~120). Patching pairs
(:func:`greater_than_pairs`) corrupt the start year to ``XX01`` (Hanna et al.'s corruption, the
repository's ``UniversalPatchingDataset.from_greater_than``). A year is written as one word
("1732") that the embedded tokenizer
splits into the century and YY, as GPT-2/Pythia's tokenizers do for these years. Every YY'
> YY is a correct answer (``Example.alternatives``), so ``nr.evaluate`` reports the share of
prompts whose top-1 token is a later year and ``p_answer`` = P(later year), the positive half
of the paper's probability difference.
"""
from __future__ import annotations

import random
from typing import Any

from .base import Example, PromptPair, PromptPairs, TaskInfo, check_range, register
from .words import EVENT_NOUNS

CENTURIES = tuple(range(11, 18))
TEMPLATE = "The {noun} lasted from the year {century}{yy:02d} to the year {century}"


def sample_greater_than(rng: random.Random, lo: int = 2, hi: int = 98) -> tuple[str, int]:
    """A prompt and its start year's last two digits."""
    yy = rng.randint(lo, hi)
    return TEMPLATE.format(noun=rng.choice(EVENT_NOUNS), century=rng.choice(CENTURIES), yy=yy), yy


def greater_than_examples(n: int = 200, seed: int = 0, tokenizer: Any | None = None) -> list[Example]:
    """``n`` prompts; the answer is YY + 1, the alternatives every later two-digit year."""
    check_range("n", n, 1)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt, yy = sample_greater_than(rng)
        later = [f"{y:02d}" for y in range(yy + 1, 100)]
        # the repository's year groups (get_year_indices): later years +1, the others −1
        out.append(Example(prompt, later[0], tuple(later[1:]), tuple(f"{y:02d}" for y in range(yy + 1))))
    return out


def greater_than_pairs(n_prompts: int = 64, seed: int = 0, tokenizer: Any | None = None) -> PromptPairs:
    """``n_prompts`` clean/corrupted pairs: the start year 17YY against 1701 (same noun and
    century). The clean prompt's answers are the later years (``base_answer`` YY + 1, the rest
    ``alternatives``) against YY and the earlier ones (``distractors``), so ``nr.circuit``
    measures the probability difference Σ P(later) − Σ P(earlier) (the repository's default
    for this task); ``source_answer`` is 02, the corrupted prompt's first later year."""
    check_range("n_prompts", n_prompts, 1)
    rng = random.Random(seed)
    pairs = []
    for _ in range(n_prompts):
        prompt, yy = sample_greater_than(rng)
        head = prompt[: prompt.index(" to the year")]
        century = head[-4:-2]
        source = prompt.replace(f"year {century}{yy:02d} ", f"year {century}01 ", 1)
        later = tuple(f"{y:02d}" for y in range(yy + 2, 100))
        pairs.append(PromptPair(prompt, source, f"{yy + 1:02d}", "02", later, tuple(f"{y:02d}" for y in range(yy + 1))))
    return PromptPairs("greater_than", {"n_prompts": n_prompts, "seed": seed}, tuple(pairs))


register(TaskInfo("greater_than", "greater-than over years (Hanna et al. 2023; Tigges et al. 2024)", greater_than_pairs,
                  greater_than_examples,
                  {"n_prompts": (64, "number of pairs (patch, circuit)"), "seed": (0, "random seed")}))
