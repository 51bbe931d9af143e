"""Greater-than (Hanna et al. 2023, as Tigges et al. 2024 track it over training).

"The war lasted from the year 1732 to the year 17" -> any year after 32 ("33" … "99").

Following circuits-over-time's ``data/greater_than_dataset.py`` (``generate_real_sentence``,
``get_valid_years``; the ``XX01`` corruption at :67-72): centuries 11..17, the start year's
two last digits YY in 02..98 (drawn uniformly here, over the valid (century, YY) pairs with a
tokenizer; the repository cycles through them), a
noun from a list of 16 (the repository's ``default_nouns`` has ~120). Patching pairs
(:func:`greater_than_pairs`) corrupt the start year to ``XX01`` (Hanna et al.'s corruption, the
repository's ``UniversalPatchingDataset.from_greater_than``). A year is written as one word
("1732") that the embedded tokenizer
splits into the century and YY, as GPT-2/Pythia's tokenizers do for these years; the answers
continue that word (``joined``: the token "33", not " 33", which GPT-2 and Pythia write as
another token), and with a tokenizer given only the years it splits so are drawn
(:func:`valid_years`, the repository's rule). Every YY'
> YY is a correct answer (``Example.alternatives``), so ``nr.evaluate`` reports the share of
prompts whose top-1 token is a later year and ``p_answer`` = P(later year), the positive half
of the paper's probability difference.
"""
from __future__ import annotations

import random
import weakref
from typing import Any

from .base import Example, PromptPair, PromptPairs, TaskError, TaskInfo, check_range, register
from .words import EVENT_NOUNS

CENTURIES = tuple(range(11, 18))
TEMPLATE = "The {noun} lasted from the year {century}{yy:02d} to the year {century}"


def valid_years(tokenizer: Any | None, source: bool = False) -> frozenset[int] | None:
    """The years of :data:`CENTURIES` a prompt may start from with ``tokenizer``, by
    circuits-over-time's ``get_valid_years`` (``data/greater_than_dataset.py``): " XXYY" is two
    tokens, the second the two digits YY, and the first and the last such year of each century
    are left out; of those, the ones whose YY a prompt draws (02..98). ``source``: also the
    century's XX01 (the corrupted start year) must be two such tokens, so that a pair's prompts
    align. None for no tokenizer (every year; the embedded model's tokenizer also allows every
    year a prompt draws). Kept per tokenizer (training asks every step)."""
    if tokenizer is None:
        return None
    try:
        per = _VALID.setdefault(tokenizer, {})
    except TypeError:  # a tokenizer that cannot be weakly referenced: computed each time
        per = {}
    key = (source, len(tokenizer))  # a tokenizer that gains tokens is read again
    if key not in per:
        per[key] = _valid_years(tokenizer, source)
    return per[key]


_VALID: "weakref.WeakKeyDictionary[Any, dict[tuple[bool, int], frozenset[int]]]" = weakref.WeakKeyDictionary()


def year_token_ids(tokenizer: Any) -> list[int | None]:
    """The token of each two-digit year 00 … 99 as it follows its century ("32" in " 17", "32";
    the repository's ``get_year_indices``): the one token of the digits with no space before
    them, None where they are not one token. The answers of greater-than prompts."""
    from .base import joined_token_id

    return [joined_token_id(tokenizer, f"{y:02d}") for y in range(100)]


def _valid_years(tokenizer: Any, source: bool) -> frozenset[int]:
    years = year_token_ids(tokenizer)

    def split(year: int) -> bool:
        ids = tokenizer(f" {year}", add_special_tokens=False)["input_ids"]
        return len(ids) == 2 and ids[1] == years[year % 100]

    out: set[int] = set()
    for century in CENTURIES:
        if source and not split(century * 100 + 1):
            continue
        ok = [y for y in range(century * 100, century * 100 + 100) if split(y)]
        out.update(y for y in ok[1:-1] if 2 <= y % 100 <= 98)  # sample_greater_than's YY
    if not out:
        raise TaskError("this tokenizer writes no year of the 12th-18th centuries as the century and two digits "
                        "(\" 1732\" as \" 17\", \"32\"), which greater-than needs")
    return frozenset(out)


def sample_greater_than(rng: random.Random, lo: int = 2, hi: int = 98,
                        years: frozenset[int] | set[int] | None = None) -> tuple[str, int]:
    """A prompt and its start year's last two digits; with ``years`` (:func:`valid_years`) a draw
    outside them is drawn again (so a tokenizer that allows every year draws what none does)."""
    if years is not None and not any(lo <= y % 100 <= hi and y // 100 in CENTURIES for y in years):
        raise TaskError(f"no start year allowed by this tokenizer has its last two digits in {lo:02d}..{hi:02d}")
    while True:
        yy = rng.randint(lo, hi)
        noun, century = rng.choice(EVENT_NOUNS), rng.choice(CENTURIES)
        if years is None or century * 100 + yy in years:
            return TEMPLATE.format(noun=noun, century=century, yy=yy), yy


def greater_than_examples(n: int = 200, seed: int = 0, tokenizer: Any | None = None) -> list[Example]:
    """``n`` prompts; the answer is YY + 1, the alternatives every later two-digit year. The
    answers continue the prompt's last word ("17" → "32": ``joined``), as the repository reads
    them (``get_year_indices``); with ``tokenizer``, start years it writes as century + YY."""
    check_range("n", n, 1)
    rng = random.Random(seed)
    years = valid_years(tokenizer)
    out = []
    for _ in range(n):
        prompt, yy = sample_greater_than(rng, years=years)
        later = [f"{y:02d}" for y in range(yy + 1, 100)]
        # the repository's year groups (get_year_indices): later years +1, the others −1
        out.append(Example(prompt, later[0], tuple(later[1:]), tuple(f"{y:02d}" for y in range(yy + 1)),
                           joined=True))
    return out


def greater_than_pairs(n_prompts: int = 64, seed: int = 0, tokenizer: Any | None = None) -> PromptPairs:
    """``n_prompts`` clean/corrupted pairs: the start year 17YY against 1701 (same noun and
    century). The clean prompt's answers are the later years (``base_answer`` YY + 1, the rest
    ``alternatives``) against YY and the earlier ones (``distractors``), so ``nr.circuit``
    measures the probability difference Σ P(later) − Σ P(earlier) (the repository's default
    for this task); ``source_answer`` is 02, the corrupted prompt's first later year."""
    check_range("n_prompts", n_prompts, 1)
    rng = random.Random(seed)
    years = valid_years(tokenizer, source=True)
    pairs = []
    for _ in range(n_prompts):
        prompt, yy = sample_greater_than(rng, years=years)
        head = prompt[: prompt.index(" to the year")]
        century = head[-4:-2]
        source = prompt.replace(f"year {century}{yy:02d} ", f"year {century}01 ", 1)
        later = tuple(f"{y:02d}" for y in range(yy + 2, 100))
        pairs.append(PromptPair(prompt, source, f"{yy + 1:02d}", "02", later, tuple(f"{y:02d}" for y in range(yy + 1)),
                                joined=True))
    return PromptPairs("greater_than", {"n_prompts": n_prompts, "seed": seed}, tuple(pairs))


register(TaskInfo("greater_than", "greater-than over years (Hanna et al. 2023; Tigges et al. 2024)", greater_than_pairs,
                  greater_than_examples,
                  {"n_prompts": (64, "number of pairs (patch, circuit)"), "seed": (0, "random seed")}))
