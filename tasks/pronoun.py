"""Gendered pronouns (one of Tigges et al. 2024's tasks): "So Mary is such a good cook, isn't"
-> "she"; with a man's name -> "he".

As circuits-over-time's ``data/gender-pronoun.csv`` (read by ``UniversalPatchingDataset.
from_gender_pronoun`` / ``from_csv``, ``utils/data_utils.py``): the sentence "So {name} is
{predicate}, isn't", its five predicates and its twenty first names (ten women's, ten men's);
the corrupted prompt names someone of the other gender in the same sentence, and the answers are
the clean prompt's pronoun against the other (logit difference). The repository ships 100 such
rows drawn once; here pairs are drawn from the same names and predicates with a seed, women and
men in turn. The sentence is the repository's text (a comma glued to its word, "isn't" one
word), for subword tokenizers: the embedded model's word-level vocabulary has none of the
predicates' words, so it refuses the task with that reason.
"""
from __future__ import annotations

import random
from typing import Any

from .base import (Example, PromptPair, PromptPairs, TaskInfo, check_range, check_vocabulary, generate_aligned,
                   register)

TEMPLATE = "So {name} is {predicate}, isn't"
PREDICATES = ("such a good cook", "a very good athlete", "a really great friend", "such a funny person",
              "a really nice person")
WOMEN = ("Judy", "Julie", "Mary", "Amy", "Lisa", "Sarah", "Anna", "Susan", "Karen", "Carol")
MEN = ("Jack", "Mark", "John", "Joe", "Sean", "Paul", "David", "Gary", "Carl", "Ryan")
PRONOUN = {"woman": "she", "man": "he"}
_HINT = ("the sentence's words must be in the model's vocabulary, the names of a pair of equal token length and "
         "'she'/'he' single tokens; the embedded model's word-level vocabulary lacks them: use a model with a subword "
         "tokenizer (--model, tokenizer=)")


def _sentence(rng: random.Random, woman: bool) -> tuple[str, str]:
    """(prompt, pronoun) for a random name of the given gender and a random predicate."""
    name = rng.choice(WOMEN if woman else MEN)
    return TEMPLATE.format(name=name, predicate=rng.choice(PREDICATES)), PRONOUN["woman" if woman else "man"]


def pronoun_examples(n: int = 200, seed: int = 0, tokenizer: Any | None = None) -> list[Example]:
    """``n`` prompts, a woman's and a man's name in turn; the answer is the pronoun. Checked
    against ``tokenizer`` (the embedded model's when None, which refuses them)."""
    check_range("n", n, 1)
    rng = random.Random(seed)
    return check_vocabulary([Example(*_sentence(rng, i % 2 == 0)) for i in range(n)], tokenizer, _HINT)


def pronoun_pairs(n_prompts: int = 64, seed: int = 0, tokenizer: Any | None = None) -> PromptPairs:
    """``n_prompts`` clean/corrupted pairs, a woman's name in the clean prompt and a man's in
    turn: the corrupted prompt is the same sentence with a name of the other gender (equal
    token length), ``base_answer`` the clean prompt's pronoun and ``source_answer`` the other,
    so the metric is logit(" she") − logit(" he") (or the reverse), the repository's."""
    check_range("n_prompts", n_prompts, 1)

    def sample(rng: random.Random, i: int) -> PromptPair:
        woman = i % 2 == 0
        base, pronoun = _sentence(rng, woman)
        name = base.split()[1]
        other = rng.choice(MEN if woman else WOMEN)
        return PromptPair(base, base.replace(f"So {name} ", f"So {other} ", 1), pronoun,
                          PRONOUN["man" if woman else "woman"])

    pairs = generate_aligned(sample, n_prompts, seed, tokenizer, _HINT)
    return PromptPairs("gender_pronoun", {"n_prompts": n_prompts, "seed": seed}, pairs)


register(TaskInfo("gender_pronoun", "gendered pronouns: 'So Mary is such a good cook, isn't' -> she (Tigges et al. "
                  "2024)", pronoun_pairs, pronoun_examples,
                  {"n_prompts": (64, "number of pairs (patch, circuit)"), "seed": (0, "random seed")}))
