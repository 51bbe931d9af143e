"""Stolfo et al.'s two control tasks: number retrieval and factual recall.

**Number retrieval** (lm-arithmetic's intervention type 11, ``interventions/entity_intervention.py``:
templates :50-57, counts :11, singular/plural :12-16): "Q : I have 3 apples and 5 cars
. How many apples do I have ? A :" -> "3". The repository's eight templates, counts 0..max_n
(two distinct draws), two things from different categories, singular for a count of 1.
Departures: the things come from this vocabulary (15 in 5 categories, lower case), not
``entity_dict.json``; the question names the thing in the plural; template 7's seller is
"Jane" (the repository's "Jasmin" is not in the vocabulary).

**Factual recall** (type 20, ``interventions/lama_intervention.py``: relations :8, cloze cut before
[Y] :61-62): relations P36 "The capital
of [X] is", P1376 "[X] is the capital of", P19 "[X] was born in", P20 "[X] died in" and P103
"The native language of [X] is", over *invented* countries and people whose facts exist only
in the embedded model's training data (``FACTS``), so recall measures what it learnt. P279
(subclass of) is left out: it needs a taxonomy the invented world does not have.
"""
from __future__ import annotations

import random
from typing import Any

from .base import Example, TaskInfo, check_choice, check_range, register
from .words import CAPITALS, COUNTRIES, LANGUAGES, NAMES, PEOPLE, THINGS

# ---------------------------------------------------------------------------- number retrieval
RETRIEVAL_TEMPLATES = (
    "Q : I have {x} {e1} and {y} {e2} . How many {cls} do I have ? A :",
    "Q : Paul has {x} {e1} and {y} {e2} . How many {cls} does Paul have ? A :",
    "Q : I can see {x} {e1} and {y} {e2} . How many {cls} are there ? A :",
    "Q : I have {x} {e1} and {y} {e2} . How many {cls} are there ? A :",
    "Q : Alice received {x} {e1} and {y} {e2} . How many {cls} did she receive ? A :",
    "Q : Mark bought {x} {e1} and {y} {e2} . How many {cls} did he buy ? A :",
    "Q : Jane sold {x} {e1} and {y} {e2} . How many {cls} did she sell ? A :",
    "Q : Sarah owns {x} {e1} and {y} {e2} . How many {cls} does she own ? A :",
)
assert {"Paul", "Alice", "Mark", "Jane", "Sarah"} <= set(NAMES)


def _thing(k: int, count: int) -> str:
    return THINGS[k][0] if count == 1 else THINGS[k][1]


def sample_retrieval(rng: random.Random, template: str, max_n: int = 20) -> Example:
    # five categories of three (THINGS is ordered by category in turn): two different ones
    i, j = rng.sample(range(len(THINGS)), 2)
    while i % 5 == j % 5:
        i, j = rng.sample(range(len(THINGS)), 2)
    x, y = rng.sample(range(max_n + 1), 2)
    ask_first = rng.random() < 0.5
    prompt = template.format(x=x, y=y, e1=_thing(i, x), e2=_thing(j, y), cls=THINGS[i if ask_first else j][1])
    return Example(prompt, str(x if ask_first else y))


def number_retrieval_examples(n: int = 200, seed: int = 0, tokenizer: Any | None = None,
                              max_n: int = 20) -> list[Example]:
    """``n`` prompts, the templates in turn; either of the two counts is asked for."""
    check_range("n", n, 1)
    check_range("max_n", max_n, 1, 99)
    rng = random.Random(seed)
    return [sample_retrieval(rng, RETRIEVAL_TEMPLATES[i % len(RETRIEVAL_TEMPLATES)], max_n) for i in range(n)]


register(TaskInfo("number_retrieval", "retrieve a count from the context (Stolfo et al. 2023, type 11)", None,
                  number_retrieval_examples, {"max_n": (20, "largest count (0..max_n)"), "seed": (0, "random seed")}))

# ---------------------------------------------------------------------------- factual recall
RELATIONS = {  # LAMA id -> (cloze template cut before [Y], the subjects' kind)
    "P36": ("The capital of {x} is", "country"),
    "P1376": ("{x} is the capital of", "capital"),
    "P19": ("{x} was born in", "person"),
    "P20": ("{x} died in", "person"),
    "P103": ("The native language of {x} is", "person"),
}


def _facts() -> dict[str, dict[str, str]]:
    """The invented world: relation -> subject -> object (fixed; the model is trained on it)."""
    n = len(COUNTRIES)
    born = {p: CAPITALS[(5 * i + 3) % n] for i, p in enumerate(PEOPLE)}
    died = {p: CAPITALS[(7 * i + 1) % n] for i, p in enumerate(PEOPLE)}
    # a person's native language is that of the country whose capital they were born in
    language = {p: LANGUAGES[CAPITALS.index(born[p])] for p in PEOPLE}
    return {"P36": dict(zip(COUNTRIES, CAPITALS)), "P1376": dict(zip(CAPITALS, COUNTRIES)),
            "P19": born, "P20": died, "P103": language}


FACTS = _facts()


def fact_prompts(relation: str) -> list[Example]:
    """Every fact of ``relation`` as a cloze prompt."""
    template = RELATIONS[relation][0]
    return [Example(template.format(x=s), o) for s, o in FACTS[relation].items()]


def factual_recall_examples(n: int = 200, seed: int = 0, tokenizer: Any | None = None,
                            relation: str = "all") -> list[Example]:
    """``n`` cloze prompts drawn (seeded) from the facts of ``relation`` ("all": every relation)."""
    check_range("n", n, 1)
    check_choice("relation", relation, ["all", *RELATIONS])
    pool = [e for r in (RELATIONS if relation == "all" else [relation]) for e in fact_prompts(r)]
    rng = random.Random(seed)
    return [rng.choice(pool) for _ in range(n)]


register(TaskInfo("factual_recall", "LAMA-style cloze facts about invented entities (Stolfo et al. 2023, type 20)",
                  None, factual_recall_examples,
                  {"relation": ("all", f"all | {' | '.join(RELATIONS)}"), "seed": (0, "random seed")}))
