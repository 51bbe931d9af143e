"""k-th smallest number in a list (the multi-step reasoning task of Hou et al. 2023).

"Numbers : 12 5 30 7 . The second smallest is" -> "7". Numbers are distinct, 0..max_n.

Departure from MechanisticProbe (``src/utils.py:358-416``): there the input is 16 numbers
with no instruction (``:414-416``), drawn with replacement (``:402``), and k is fixed per
fine-tuned model (``--stask minKK``, ``:407-412``); here k is stated in the prompt so one
model answers every k, and numbers are distinct so the reasoning tree is unambiguous.
``style="repository"`` gives the repository's format instead: the numbers alone, drawn with
repeats, k fixed (a model must be fine-tuned for it: ``reason-interp finetune --param
style=repository``). Repeated values are labelled as the repository labels them: only a
value's first copy (:func:`repository_prompt`), so with repeats fewer than k statements are
useful.

Reasoning tree (as in MechanisticProbe): to name the k-th smallest the model must find the
k smallest numbers; the answer is the largest of them. Step 1 uses the k-1 numbers below
the answer (the leaves), step 2 the answer itself (step 1 when k = 1); the other numbers
are not useful (step 0).
"""
from __future__ import annotations

import math
import numbers
import random
from dataclasses import replace
from typing import Any, Sequence

from nnsight_reasoning.errors import as_index

from .base import (Example, PromptPair, PromptPairs, TaskError, TaskInfo, check_choice, check_range, generate_aligned,
                   register)
from .reasoning import CORRUPTIONS, ReasoningPrompt, ReasoningPrompts, Statement, corrupted
from .words import ORDINALS

PREFIX = "Numbers :"


def kth_prompt(numbers: list[int], k: int) -> ReasoningPrompt:
    """The prompt for ``numbers`` with each number labelled by the reasoning tree."""
    answer = sorted(numbers)[k - 1]
    last = 2 if k > 1 else 1
    statements = tuple(Statement(str(x), x <= answer, last if x == answer else int(x < answer)) for x in numbers)
    return ReasoningPrompt(statements, str(answer), PREFIX, f". The {ORDINALS[k - 1]} smallest is")


def sample_kth(rng: random.Random, length: int, k: int, max_n: int) -> Example:
    p = kth_prompt(rng.sample(range(max_n + 1), length), k)
    return Example(p.text, p.answer)


STYLES = ("toolkit", "repository")


def repository_prompt(numbers: list[int], k: int, joined: bool = False) -> ReasoningPrompt:
    """The repository's format: the numbers alone ("17 5 40 5 …"), the answer the k-th smallest
    counting repeats. Labels as its ``label_generator`` (``src/stask/probe.py:22-66``): only the
    first copy of a value is labelled, so the useful statements are the first copies of the
    distinct values among the k smallest, the answer the first copy of the k-th smallest's value
    (step 2; the others step 1), and a later copy of a value is not useful (step 0). ``joined``:
    the answer scored as its own token, "7" not " 7", as the repository's GPT-2 labels are
    tokenised alone (``src/gpt2.py:31, 73``, ``tokenizer(tmp_label)``)."""
    ranked = sorted(numbers)
    answer = ranked[k - 1]
    first = {x: numbers.index(x) for x in set(ranked[:k])}  # the repository's data_num.index
    last = 2 if k > 1 else 1
    statements = tuple(Statement(str(x), first.get(x) == i, (last if x == answer else 1) if first.get(x) == i else 0)
                       for i, x in enumerate(numbers))
    return ReasoningPrompt(statements, str(answer), joined=joined)


def _counted_prompt(numbers: list[int], k: int) -> ReasoningPrompt:
    """``numbers`` with the k smallest counted with their repeats (ranked by value, then
    position) marked useful: what a corruption must keep for the answer to stay the same."""
    order = sorted(range(len(numbers)), key=lambda i: (numbers[i], i))
    rank = {i: r for r, i in enumerate(order)}
    return ReasoningPrompt(tuple(Statement(str(x), rank[i] < k, int(rank[i] < k)) for i, x in enumerate(numbers)),
                           str(numbers[order[k - 1]]))


def _check(length: int, k: int, max_n: int, style: str = "toolkit") -> None:
    check_choice("style", style, list(STYLES))
    if style == "repository":  # no wording: any k, numbers repeat
        check_range("length", length, 2, 64)
        check_range("k", k, 1, length)
        check_range("max_n", max_n, 1, 99)
        return
    check_range("length", length, 2, 12)
    check_range("k", k, 1, min(length, len(ORDINALS)))
    check_range("max_n", max_n, length - 1, 99)


def kth_smallest(n_prompts: int = 200, length: int = 5, k: int | Sequence[int] | str = 2, max_n: int = 99,
                 corrupt: str | None = None, n_corrupt: int = 1, seed: int = 0, style: str = "toolkit",
                 joined: bool = False, place: Sequence[int] | str | int | None = None) -> ReasoningPrompts:
    """Labelled k-th-smallest prompts for attention analysis and MechanisticProbe.

    Parameters
    ----------
    n_prompts : number of prompts.   length : numbers per list (2..12).
    k : which smallest to ask for (1 = smallest; up to 6 in the toolkit style). Several (a
        sequence, or "1-8", "1,2,4"): the same draws labelled for each k in turn (the same lists,
        unless ``corrupt`` drops numbers, which depends on k), each prompt's ``group`` its k, so
        that ``nr.probe`` probes every k on its own prompts in one run, as MechanisticProbe
        probes its pretrained model for k = 1 … 8 on one sample of lists
        (``src/stask/probe.py:124-131``, ``min00`` … ``min07``). Only for labelled prompts:
        scoring answers (evaluate, prune, finetune) takes one k.
    max_n : numbers are distinct, drawn from 0..max_n.
    corrupt : None, "shuffle" (reorder the list), "drop" (remove ``n_corrupt`` numbers that
        are not useful) or "perturb" (replace ``n_corrupt`` numbers by unused values; the
        answer and labels are recomputed).
    seed : same seed -> same prompts (the corruption draws from its own seeded stream).
    style : "toolkit" (the wording above, distinct numbers) or "repository" (MechanisticProbe's:
        the numbers alone, drawn with repeats from 0..max_n, e.g. ``length=16``; k is not stated).
    joined : repository style only: the answer is the number's own token, "7" and not " 7", as
        the repository's GPT-2 labels are tokenised alone (``src/gpt2.py:31, 73``: on GPT-2 these are
        two different tokens; the default scores " 7", the token that follows a space).
    place : 1-based list positions, e.g. ``(8, 12)``: the smallest number is moved to the first,
        the second smallest to the second, … (each swapped with the number there, in turn), so
        that the reasoning tree sits at the same positions in every prompt; the attention-flow
        case study of MechanisticProbe (``src/stask/prune.py:197, 211-220``: k = 2, 16 numbers,
        positions 8 and 12). As there, only lists of distinct numbers are placed: in the
        repository style, lists with a repeat are drawn again until ``n_prompts`` are distinct.
    """
    if _one_k(k):
        k = int(k)  # numpy integers too
    else:  # several k: the same draws (they do not depend on k), one group each
        parts = [kth_smallest(n_prompts, length, kk, max_n, corrupt, n_corrupt, seed, style, joined, place)
                 for kk in _ks(k)]
        return ReasoningPrompts("kth_smallest", {**parts[0].params, "k": _ks(k), "group": K_GROUP},
                                tuple(replace(p, group=part.params["k"]) for part in parts for p in part))
    _check(length, k, max_n, style)
    places = _places(place, length, style, max_n)
    if places and corrupt is not None:
        raise TaskError("place fixes where the smallest numbers stand; corrupt (shuffle, drop, perturb) would move "
                        "them: give one of the two")
    if joined and style != "repository":
        raise TaskError("joined applies to style='repository' (a prompt of numbers alone); the toolkit style's "
                        "prompt ends with a word, and its answer follows a space")
    check_range("n_prompts", n_prompts, 1)
    if corrupt is not None and corrupt not in CORRUPTIONS:
        raise TaskError(f"corrupt must be one of {list(CORRUPTIONS)} or None (got {corrupt!r})")
    if corrupt == "negate":
        raise TaskError("corrupt='negate' rewrites a sentence as 'That ... is false.'; kth_smallest's statements are "
                        "numbers: use shuffle, drop or perturb (negate applies to proofwriter/arc files)")
    rng = random.Random(seed)
    if style == "repository":
        if corrupt in ("perturb",):
            raise TaskError("corrupt='perturb' is for the toolkit style (distinct numbers); use shuffle or drop")
        if places:  # the repository's case study keeps the lists whose numbers are distinct (:212)
            lists = []
            while len(lists) < n_prompts:
                nums = rng.choices(range(max_n + 1), k=length)
                if len(set(nums)) == length:
                    lists.append(placed(nums, places))
        else:
            lists = [rng.choices(range(max_n + 1), k=length) for _ in range(n_prompts)]
        if corrupt in ("shuffle", "drop"):
            # corrupt with every copy among the k smallest kept (the answer counts repeats, so
            # dropping a later copy of a small value would change it), then label the list that is
            # left as the repository does (first copies, in its new order)
            kept = corrupted([_counted_prompt(nums, k) for nums in lists], corrupt, n_corrupt, seed)
            lists = [[int(s.text) for s in p.statements] for p in kept]
        prompts = [repository_prompt(nums, k, joined) for nums in lists]
        params = dict(n_prompts=n_prompts, length=length, k=k, max_n=max_n, corrupt=corrupt,
                      n_corrupt=n_corrupt, seed=seed, style=style, **({"joined": True} if joined else {}),
                      **({"place": list(places)} if places else {}))
        return ReasoningPrompts("kth_smallest", params, tuple(prompts))
    lists = [placed(rng.sample(range(max_n + 1), length), places) for _ in range(n_prompts)]
    if corrupt == "perturb":
        check_range("n_corrupt", n_corrupt, 1, length)
        if max_n + 1 < length + n_corrupt:
            raise TaskError(f"perturb needs max_n >= length + n_corrupt - 1 (got max_n={max_n})")
        crng = random.Random(f"{seed}-perturb")
        for nums in lists:
            fresh = crng.sample([x for x in range(max_n + 1) if x not in nums], n_corrupt)
            for j, x in zip(crng.sample(range(length), n_corrupt), fresh):
                nums[j] = x
    elif corrupt == "drop" and length - n_corrupt < k:
        raise TaskError(f"dropping {n_corrupt} of {length} numbers leaves fewer than k={k}; lower n_corrupt")
    prompts = [kth_prompt(nums, k) for nums in lists]
    if corrupt in ("shuffle", "drop"):
        prompts = corrupted(prompts, corrupt, n_corrupt, seed)
    params = dict(n_prompts=n_prompts, length=length, k=k, max_n=max_n, corrupt=corrupt,
                  n_corrupt=n_corrupt, seed=seed, **({"place": list(places)} if places else {}))
    return ReasoningPrompts("kth_smallest", params, tuple(prompts))


K_GROUP = "which smallest is asked for, k (MechanisticProbe's probe of a pretrained model, src/stask/probe.py:124-131)"


def _one_k(k: Any) -> bool:
    """``k`` is one integer (numpy's too; not a bool), not several."""
    return as_index(k) is not None


def _ks(k: Sequence[int] | str) -> list[int]:
    """Several k as a list: a sequence of ints or a string "1-8" / "1,2,4" (the CLI's
    ``--param k=1-8``)."""
    try:
        if isinstance(k, str):
            out = []
            for part in k.split(","):
                lo, _, hi = part.partition("-")
                out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
        else:
            out = [int(x) for x in k]
    except (TypeError, ValueError):
        raise TaskError(f"k takes an integer, or several as 1-8 or 1,2,4 (got {k!r})") from None
    if not out or len(set(out)) != len(out):
        raise TaskError(f"k takes distinct values, e.g. 1-8 (got {k!r})")
    return out


def placed(numbers: list[int], places: Sequence[int]) -> list[int]:
    """``numbers`` (distinct) with the r-th smallest swapped into position ``places[r - 1]``
    (1-based), r = 1, 2, … in turn, as MechanisticProbe's case study swaps them
    (``src/stask/prune.py:213-219``)."""
    nums = list(numbers)
    for value, pos in zip(sorted(nums), places):
        i = nums.index(value)
        nums[i], nums[pos - 1] = nums[pos - 1], value
    return nums


def _places(place: Sequence[int] | str | int | None, length: int, style: str, max_n: int) -> tuple[int, ...]:
    """``place`` as a tuple of 1-based positions ("8,12", 8 or [8, 12]), checked."""
    if place is None or place == "":
        return ()
    try:
        out = (int(place),) if isinstance(place, numbers.Integral) else tuple(
            int(x) for x in (place.split(",") if isinstance(place, str) else place))
        if not out:
            return ()
    except (TypeError, ValueError):
        raise TaskError(f"place takes 1-based list positions, e.g. place=8,12 (got {place!r})") from None
    if len(set(out)) != len(out) or any(not 1 <= p <= length for p in out):
        raise TaskError(f"place needs distinct positions in 1..length={length} (got {list(out)})")
    if style == "repository" and math.prod((max_n + 1 - i) / (max_n + 1) for i in range(length)) < 1e-4:
        # lists with a repeat are drawn again: refuse where nearly every draw has one
        raise TaskError(f"place needs lists of distinct numbers, and fewer than 1 in 10,000 lists of {length} numbers "
                        f"from 0..{max_n} are: lower length")
    return out


def kth_smallest_pairs(n_prompts: int = 64, length: int = 5, k: int = 2, max_n: int = 99, seed: int = 0,
                       tokenizer: Any | None = None, corrupt: str | None = None, n_corrupt: int = 1,
                       style: str = "toolkit", joined: bool = False,
                       place: Sequence[int] | str | int | None = None) -> PromptPairs:
    """Patching pairs: the source list is the base list with its answer replaced by another
    value of the same rank, so only that one number (and the answer) differs."""
    if not _one_k(k):
        raise TaskError("patching pairs take one k; several k apply to labelled prompts (reason-interp probe)")
    _check(length, k, max_n)
    if style != "toolkit" or joined:
        raise TaskError("patching pairs use the toolkit style (distinct numbers, k in the prompt); style and joined "
                        "apply to labelled prompts and examples")
    if place is not None:
        raise TaskError("place applies to labelled prompts (reason-interp attention / probe / prune), not to patching "
                        "pairs")
    if corrupt is not None:
        raise TaskError("corrupt applies to labelled prompts (reason-interp attention / probe), not to patching pairs")

    def sample(rng: random.Random, i: int) -> PromptPair | None:
        nums = rng.sample(range(max_n + 1), length)
        s = sorted(nums)
        lo = s[k - 2] + 1 if k > 1 else 0
        hi = s[k] - 1 if k < length else max_n
        free = [x for x in range(lo, hi + 1) if x != s[k - 1]]
        if not free:
            return None
        src = [rng.choice(free) if x == s[k - 1] else x for x in nums]
        base, source = kth_prompt(nums, k), kth_prompt(src, k)
        return PromptPair(base.text, source.text, base.answer, source.answer)

    params = dict(n_prompts=n_prompts, length=length, k=k, max_n=max_n, seed=seed)
    pairs = generate_aligned(sample, n_prompts, seed, tokenizer, "numbers must be single tokens; lower max_n")
    return PromptPairs("kth_smallest", params, pairs)


def kth_smallest_examples(n: int = 200, seed: int = 0, tokenizer: Any | None = None, length: int = 5, k: int = 2,
                          max_n: int = 99, corrupt: str | None = None, n_corrupt: int = 1,
                          style: str = "toolkit", joined: bool = False,
                          place: Sequence[int] | str | int | None = None) -> list[Example]:
    """The prompts of :func:`kth_smallest` with their answers (for accuracy, e.g. under corruption)."""
    if not _one_k(k):  # one text would carry several answers (the repository style does not state k)
        raise TaskError("scoring answers takes one k; several k apply to labelled prompts (reason-interp attention, "
                        "probe)")
    return [Example(p.text, p.answer, joined=p.joined)
            for p in kth_smallest(n, length, k, max_n, corrupt, n_corrupt, seed, style, joined, place)]


register(TaskInfo(
    "kth_smallest", "k-th smallest number in a list (Hou et al. 2023); labelled reasoning tree",
    kth_smallest_pairs, kth_smallest_examples,
    {"n_prompts": (64, "number of prompts (pairs for patch)"), "length": (5, "numbers in the list"),
     "k": (2, "which smallest to ask for (1 = smallest); attention/probe: several, e.g. 1-8, one prompt group each"),
     "max_n": (99, "numbers are distinct, 0..max_n"),
     "corrupt": (None, "attention/probe only: shuffle | drop | perturb"),
     "n_corrupt": (1, "numbers dropped or perturbed"), "seed": (0, "random seed"),
     "style": ("toolkit", "toolkit (wording, distinct numbers) | repository (MechanisticProbe's: numbers alone, "
                          "repeats, k fixed)"),
     "joined": (False, "style=repository: the answer is the number's own token ('7', not ' 7'), as the "
                       "repository's GPT-2 labels"),
     "place": (None, "1-based positions the smallest, second smallest, … numbers are moved to (the repository's "
                     "attention-flow case study: 8,12)")},
    labelled=kth_smallest))
