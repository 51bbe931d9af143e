"""Two-class sentiment (Tigges et al. 2024's continuation task, ``sentiment_cont``).

"I thought this movie was great , I loved it . The acting was superb , the plot was good ,
and overall it was just very" -> a positive word ("great", "amazing", "awesome", "good",
"perfect"); the negative prompts (adjectives from the negative list, "hated") ask for
"terrible", "awful", "bad", "horrible" or "disgusting".

As in circuits-over-time (``data/sentiment_datasets.py``, PromptType.COMPLETION_2, word lists in
``prompts.yaml``; its file index gives no line numbers): three adjectives in a row of a circular list (here a random start),
the verb "loved"/"hated", and a class of five answer words; every word of the class is a
correct answer (``Example.alternatives``). Departure: the repository's adjective lists are
cut to single tokens of its model; here they are the embedded vocabulary's (16 positive,
13 negative).
"""
from __future__ import annotations

import random
from typing import Any

from .base import Example, PromptPair, PromptPairs, TaskInfo, check_range, register
from .words import NEGATIVE_ADJECTIVES, NEGATIVE_ANSWERS, POSITIVE_ADJECTIVES, POSITIVE_ANSWERS

TEMPLATE = ("I thought this movie was {a1} , I {verb} it . The acting was {a2} , the plot was {a3} , "
            "and overall it was just very")


def sample_sentiment(rng: random.Random, positive: bool) -> Example:
    adjectives = POSITIVE_ADJECTIVES if positive else NEGATIVE_ADJECTIVES
    i = rng.randrange(len(adjectives))
    a1, a2, a3 = (adjectives[(i + k) % len(adjectives)] for k in range(3))
    prompt = TEMPLATE.format(a1=a1, a2=a2, a3=a3, verb="loved" if positive else "hated")
    answers, other = (POSITIVE_ANSWERS, NEGATIVE_ANSWERS) if positive else (NEGATIVE_ANSWERS, POSITIVE_ANSWERS)
    return Example(prompt, answers[0], answers[1:], tuple(other))


def sentiment_examples(n: int = 200, seed: int = 0, tokenizer: Any | None = None) -> list[Example]:
    """``n`` prompts, positive and negative in turn (as the repository pairs them)."""
    check_range("n", n, 1)
    rng = random.Random(seed)
    return [sample_sentiment(rng, i % 2 == 0) for i in range(n)]


def sentiment_pairs(n_prompts: int = 64, seed: int = 0, tokenizer: Any | None = None) -> PromptPairs:
    """``n_prompts`` clean/corrupted pairs, positive and negative clean prompts in turn: the
    corrupted prompt is the other class's version (its adjectives, in the same places, and the
    other verb), as the repository pairs them. The clean prompt's class words are its answers
    (``base_answer`` and ``alternatives``), the other class's the ``distractors``: ``nr.circuit``
    measures the mean logit of one class minus the other's (the repository's ``logit_diff``,
    mode "pairs", for ``sentiment_cont``)."""
    check_range("n_prompts", n_prompts, 1)
    rng = random.Random(seed)
    pairs = []
    for i in range(n_prompts):
        positive = i % 2 == 0
        k = rng.randrange(len(POSITIVE_ADJECTIVES))
        j = rng.randrange(len(NEGATIVE_ADJECTIVES))
        pos = TEMPLATE.format(verb="loved", **{f"a{m + 1}": POSITIVE_ADJECTIVES[(k + m) % len(POSITIVE_ADJECTIVES)]
                                               for m in range(3)})
        neg = TEMPLATE.format(verb="hated", **{f"a{m + 1}": NEGATIVE_ADJECTIVES[(j + m) % len(NEGATIVE_ADJECTIVES)]
                                               for m in range(3)})
        (base, source), (good, bad) = ((pos, neg), (POSITIVE_ANSWERS, NEGATIVE_ANSWERS)) if positive else \
            ((neg, pos), (NEGATIVE_ANSWERS, POSITIVE_ANSWERS))
        pairs.append(PromptPair(base, source, good[0], bad[0], tuple(good[1:]), tuple(bad)))
    return PromptPairs("sentiment", {"n_prompts": n_prompts, "seed": seed}, tuple(pairs))


register(TaskInfo("sentiment", "two-class movie-review sentiment (Tigges et al. 2024)", sentiment_pairs,
                  sentiment_examples,
                  {"n_prompts": (64, "number of pairs (patch, circuit)"), "seed": (0, "random seed")}))
