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

from .base import Example, TaskInfo, check_range, register
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


register(TaskInfo("sentiment", "two-class movie-review sentiment (Tigges et al. 2024)", None, sentiment_examples,
                  {"seed": (0, "random seed")}))
