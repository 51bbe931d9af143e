"""Entity-attribute binding in context (Feng & Steinhardt 2024).

A context states n entity–attribute pairs and a query asks for one entity's attribute.
Families follow binding-iclr's tasks (``coref/datasets/``: CAPITALS ``compound_capitals.py:151-168``,
FRUITS ``fruits.py:103-110``, SHAPES ``shapes.py:98-105``, BIOSBIAS ``biosbias.py:137-144``; each task's
question frame is its dataset's ``template``, e.g. ``compound_capitals.py:151-157``), in the embedded vocabulary:

==============  =========================================  ==========================================================
family          statement                                  query (the answer is the next token)
==============  =========================================  ==========================================================
``cities``      ``Alice lives in Paris .``                 ``Alice lives in`` (the plain form; default)
``capitals``    ``Alice lives in the capital city of``     ``Question : Which city does Alice live in ? Answer : Alice
                ``Zarovia .``                              lives in the city of`` -> the *capital* of Zarovia
``fruits``      ``Alice likes eating the pear .``          ``Question : Which fruit does Alice like ? Answer : Alice
                                                           likes the``
``occupations`` ``Alice works as a baker .``               ``Question : What occupation does Alice have ? Answer :
                                                           Alice has the occupation of``
``boxes``       ``The ring is in box C .``                 ``Question : Which box is the ring in ? Answer : The ring
                                                           is in box``
``shapes``      ``The star is red .``                      ``Question : Which shape is colored red ? Answer : The red
                                                           shape is the`` -> ``star`` (entity = the colour)
``parallel``    ``Alice , Bob and Eva live in the capital  as ``capitals``
                cities of Zarovia , Belmora and Quelland
                respectively .`` (one sentence)
``onehop``      as ``capitals``                            ``Question : The person living in Zarburg likes red . …
                                                           What color does Alice like ? Answer : Alice likes`` -> the
                                                           colour of the capital of Alice's country
==============  =========================================  ==========================================================

Departures from binding-iclr: the framing sentence ("Answer the question based on the
context below. Keep the answer short.") is left out and contexts start with ``Context :``
(the embedded model is trained on exactly these forms); ``capitals`` uses invented countries
whose capitals the embedded model learnt as facts (``factual_recall``); ``boxes`` is not in
the repository (it is the objects-in-boxes task of the issue); ``occupations`` states the
occupation in one sentence where BIOSBIAS gives a biography. ``entity_width=2`` names
people by first name and surname ("Alice Smith") to test multi-token entities (in prompts
for ``evaluate``; the binding-ID experiment needs one-token entities).

``parallel`` is binding-iclr's PARALLEL (CAPITALS with ``is_parallel``): all pairs in one
sentence. Its words "cities" and "respectively", like ONEHOP's, are not in the embedded
vocabulary. Every family runs binding-iclr's measures (entities and attributes are found in
the context in any order); the toolkit's summary measure needs one statement per pair starting
with its entity (:data:`EXPERIMENT_FAMILIES`).

``onehop`` is binding-iclr's ONEHOP (``coref/datasets/onehop.py``): per context, one colour per
capital is drawn and the question states them in a random order ("The person living in {city}
likes {color} ."), covering the context's countries and its source context's (the repository's
``num_qn_context``), so a substituted country has an answer too. Its words "person", "living" and
"color" are not in the embedded model's vocabulary: it runs on user models (the experiments
refuse prompts with unknown words).

For ``capitals`` the context states a country and the answer is its capital, so binding is
two hops (bind the person to the country, recall the country's capital) as in binding-iclr's
CAPITALS; substituting the attribute in ``nr.binding`` edits the country token.

:func:`binding_examples` gives plain prompts (``evaluate --task binding``);
:func:`binding_contexts` gives the contexts of the binding-ID experiments (``nr.binding``).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Sequence

from .base import Example, TaskData, TaskError, TaskInfo, check_choice, check_range, register
from .words import (BOX_LABELS, CAPITALS, CITIES, COLORS, COUNTRIES, FRUITS, NAMES, OBJECTS, OCCUPATIONS, SHAPES,
                    SURNAMES)


@dataclass(frozen=True)
class Family:
    """How one binding family writes a statement and a query (``{e}`` entity, ``{a}`` attribute)."""

    statement: str
    query: str
    entities: tuple[str, ...]
    attributes: tuple[str, ...]
    framed: bool = True  # "Context : … Question : … Answer : …"
    people: bool = True  # entities are people (entity_width 2 adds a surname)
    answer: dict[str, str] | None = None  # attribute -> answer when the answer is not the attribute
    # one hop more (ONEHOP): the question states "{hop}" per (first answer, value) and the answer
    # is the value of the entity's first answer; ``hop_values`` are drawn per context
    hop: str | None = None
    hop_values: tuple[str, ...] = ()
    # one statement for all pairs (PARALLEL): "{es}" the entities, "{as}" the attributes, each
    # list as "X , Y and Z"; ``statement`` is unused then
    joint: str | None = None


FAMILIES: dict[str, Family] = {
    "cities": Family("{e} lives in {a} .", "{e} lives in", NAMES, CITIES, framed=False),
    "capitals": Family("{e} lives in the capital city of {a} .",
                       "Question : Which city does {e} live in ? Answer : {e} lives in the city of", NAMES, COUNTRIES,
                       answer=dict(zip(COUNTRIES, CAPITALS))),
    "fruits": Family("{e} likes eating the {a} .", "Question : Which fruit does {e} like ? Answer : {e} likes the",
                     NAMES, FRUITS),
    "occupations": Family("{e} works as a {a} .",
                          "Question : What occupation does {e} have ? Answer : {e} has the occupation of", NAMES,
                          OCCUPATIONS),
    "boxes": Family("The {e} is in box {a} .", "Question : Which box is the {e} in ? Answer : The {e} is in box",
                    OBJECTS, BOX_LABELS, people=False),
    "shapes": Family("The {a} is {e} .", "Question : Which shape is colored {e} ? Answer : The {e} shape is the",
                     COLORS, SHAPES, people=False),
    # binding-iclr's ONEHOP (coref/datasets/onehop.py): CAPITALS' statements; the question first
    # says which colour the person living in each capital likes, then asks for the entity's
    # binding-iclr's PARALLEL (CAPITALS' parallel_template): every pair in one sentence
    "parallel": Family("", "Question : Which city does {e} live in ? Answer : {e} lives in the city of", NAMES,
                       COUNTRIES, answer=dict(zip(COUNTRIES, CAPITALS)),
                       joint="{es} live in the capital cities of {as} respectively ."),
    "onehop": Family("{e} lives in the capital city of {a} .",
                     "Question : {hops} What color does {e} like ? Answer : {e} likes", NAMES, COUNTRIES,
                     answer=dict(zip(COUNTRIES, CAPITALS)), hop="The person living in {a} likes {v} .",
                     hop_values=COLORS),
}


@dataclass(frozen=True)
class BindingContext:
    """n entity–attribute statements of one ``family`` in order; ``text(query)`` asks for
    entity ``query``'s attribute, ``text(query, order)`` states the pairs in another order,
    ``text(query, entity=name)`` asks about another entity. ``answers[k]`` is the answer for
    entity k (the attribute, or for ``capitals`` the country's capital)."""

    entities: tuple[str, ...]
    attributes: tuple[str, ...]
    family: str = "cities"
    # ONEHOP: the question's (first answer, value) sentences in the order stated, covering this
    # context's attributes (and its source context's, so substituted attributes have answers)
    hops: tuple[tuple[str, str], ...] = ()

    def text(self, query: int, order: Sequence[int] | None = None, entity: str | None = None) -> str:
        f = FAMILIES[self.family]
        hops = " ".join(f.hop.format(a=a, v=v) for a, v in self.hops) if f.hop else ""
        q = f.query.format(e=self.entities[query] if entity is None else entity, hops=hops)
        return f"{self.context(order)} {q}"

    def context(self, order: Sequence[int] | None = None) -> str:
        """The context section of every prompt of this context (the statements, framed): what
        binding-iclr freezes during interventions."""
        f = FAMILIES[self.family]
        order = range(len(self.entities)) if order is None else order
        if f.joint:
            context = f.joint.format(es=_listed([self.entities[k] for k in order]),
                                     **{"as": _listed([self.attributes[k] for k in order])})
        else:
            context = " ".join(f.statement.format(e=self.entities[k], a=self.attributes[k]) for k in order)
        return f"Context : {context}" if f.framed else context

    @property
    def answers(self) -> tuple[str, ...]:
        f = FAMILIES[self.family]
        first = self.attributes if f.answer is None else tuple(f.answer[a] for a in self.attributes)
        if f.hop is None:
            return first
        value = dict(self.hops)
        return tuple(value[a] for a in first)


def _listed(words: Sequence[str]) -> str:
    """binding-iclr's ``format_parallel``: "X , Y and Z" (punctuation as its own word)."""
    return " , ".join(words[:-1]) + " and " + words[-1]


def with_hops(rng: random.Random, ctx: BindingContext, also: Sequence[str] = (), n: int | None = None,
              pool: Sequence[str] = (), values: Sequence[str] | None = None) -> BindingContext:
    """``ctx`` with its question's hop sentences (a family with ``hop``; others unchanged): one
    distinct value (from ``values``, default the family's) per first answer of its attributes and
    of the attributes ``also`` (a source context's), stated in a random order. ``n``: state
    exactly n (binding-iclr's ``num_qn_context``, ``coref/datasets/onehop.py:71-80``): the first
    n of those, then attributes drawn from ``pool`` that neither context holds."""
    f = FAMILIES[ctx.family]
    if f.hop is None:
        return ctx
    attrs = [*ctx.attributes, *also]
    if n is not None:
        attrs = attrs[:n] + rng.sample([a for a in pool if a not in attrs], max(0, n - len(attrs)))
    keys = [f.answer[a] if f.answer else a for a in attrs]
    pairs = list(zip(keys, rng.sample(f.hop_values if values is None else list(values), len(keys))))
    rng.shuffle(pairs)
    return replace(ctx, hops=tuple(pairs))


def _entities(rng: random.Random, family: Family, n: int, width: int) -> tuple[str, ...]:
    if width == 1 or not family.people:
        return tuple(rng.sample(family.entities, n))
    # distinct first names and distinct surnames: no token tells two entities apart alone
    return tuple(f"{a} {b}" for a, b in zip(rng.sample(family.entities, n), rng.sample(SURNAMES, n)))


def sample_context(rng: random.Random, n_pairs: int, family: str = "cities", entity_width: int = 1) -> BindingContext:
    f = FAMILIES[family]
    ctx = BindingContext(_entities(rng, f, n_pairs, entity_width), tuple(rng.sample(f.attributes, n_pairs)), family)
    return with_hops(rng, ctx)


def _check(n_pairs: int, family: str, entity_width: int) -> None:
    check_choice("family", family, list(FAMILIES))
    f = FAMILIES[family]
    check_range("n_pairs", n_pairs, 2, min(len(f.entities), len(f.attributes)))  # distinct entities and attributes
    check_range("entity_width", entity_width, 1, 2)
    if entity_width == 2 and not FAMILIES[family].people:
        raise TaskError(f"entity_width=2 needs a family whose entities are people "
                        f"({', '.join(k for k, f in FAMILIES.items() if f.people)}); {family!r} names objects")


def sample_binding(rng: random.Random, n_pairs: int, family: str = "cities", entity_width: int = 1) -> Example:
    ctx = sample_context(rng, n_pairs, family, entity_width)
    q = rng.randrange(n_pairs)
    return Example(ctx.text(q), ctx.answers[q])


def binding_examples(n: int = 200, seed: int = 0, tokenizer: Any | None = None, n_pairs: int = 2,
                     family: str = "cities", entity_width: int = 1) -> list[Example]:
    """``n`` binding prompts with ``n_pairs`` statements of ``family``; one entity is queried."""
    _check(n_pairs, family, entity_width)
    rng = random.Random(seed)
    return [sample_binding(rng, n_pairs, family, entity_width) for _ in range(n)]


register(TaskInfo("binding", "entity-attribute binding (Feng & Steinhardt 2024)", None, binding_examples,
                  {"n_pairs": (2, "entity-attribute statements in the context (2-16)"),
                   "family": ("cities", f"statement family: {' | '.join(FAMILIES)}"),
                   "entity_width": (1, "tokens per entity: 1, or 2 (first name and surname)"),
                   "seed": (0, "random seed")}))


def sample_contexts(n: int, n_pairs: int = 2, seed: int = 0, family: str = "cities") -> list[BindingContext]:
    """``n`` contexts of ``n_pairs`` distinct entities and distinct attributes (seeded)."""
    check_range("n", n, 1)
    _check(n_pairs, family, 1)
    rng = random.Random(seed)
    return [sample_context(rng, n_pairs, family) for _ in range(n)]


@dataclass(frozen=True, repr=False)
class BindingContexts(TaskData):
    """The data of a binding-ID run (``nr.binding``): the measured ``contexts``, the
    ``estimate`` contexts over which the binding-ID difference vectors are averaged (an
    independent draw, seed ``seed + 1``), and per context a ``sources`` context of the same
    family whose entities and attributes are all new to it (seed ``seed + 2``; binding-iclr's
    E0', E1', A0', A1' of the factorizability test). Iterates over ``contexts``; ``params`` (with
    ``seed``) are stored in results as ``task_params``."""

    _items: ClassVar[str] = "contexts"
    made_by: ClassVar[str] = "nr.tasks.binding_contexts(n_contexts, n_pairs, n_estimate, seed)"
    task: str
    params: dict[str, Any]
    contexts: tuple[BindingContext, ...]
    estimate: tuple[BindingContext, ...]
    sources: tuple[BindingContext, ...] = ()  # per context: same family, none of its entities or attributes
    # estimate contexts of the measured family and size (seed + 3), drawn when ``estimate`` comes
    # from another family or size: the cross-task subspace subtracts their binding IDs
    base_estimate: tuple[BindingContext, ...] = ()

    @property
    def n_pairs(self) -> int:
        return len(self.contexts[0].entities)

    @property
    def seed(self) -> int:
        return int(self.params.get("seed", 0))

    def __repr__(self) -> str:
        return f"BindingContexts(n={len(self)}, n_estimate={len(self.estimate)}, params={self.params})"


# The families the embedded model is trained on and its vocabulary covers (scripts/train_embedded.py
# draws from these, and the model card measures them); parallel and onehop need words it lacks.
EMBEDDED_FAMILIES = ("cities", "capitals", "fruits", "occupations", "boxes", "shapes")

# The toolkit's summary measure (``nr.binding(..., measure="accuracy")``) exchanges statements
# from their entity on: its statements must start with the entity, one pair each.
EXPERIMENT_FAMILIES = tuple(k for k, f in FAMILIES.items() if f.statement.startswith("{e}") and not f.joint)


def binding_contexts(n_contexts: int = 200, n_pairs: int = 2, n_estimate: int = 200, seed: int = 0,
                     family: str = "cities", split: bool = False,
                     estimate_family: str | None = None, estimate_pairs: int | None = None,
                     hops: int | None = None) -> BindingContexts:
    """``n_contexts`` contexts of ``n_pairs`` statements of ``family`` (seed ``seed``) and
    ``n_estimate`` other contexts (seed ``seed + 1``) for the binding-ID vectors.

    ``split``: binding-iclr's train/test split of the vocabulary (``coref/datasets/common.py:
    51-53, 271-283``: the first half of the family's entities and attributes, in list order, for
    the estimate contexts, the second half for the measured contexts and their sources), so
    that the mean vectors are tested on words they were not estimated from.

    ``estimate_family``: draw the estimate contexts from another family (binding-iclr's
    cross-task means, ``scripts/run_experiment.py:536-596``: the binding-ID vectors of one task
    applied to another). ``estimate_pairs``: pairs per estimate context (default ``n_pairs``;
    the subspace test estimates Δ_1 and Δ_2 on 3 pairs and tests on 2). When either differs
    from the measured contexts, ``base_estimate`` holds ``n_estimate`` estimate contexts of the
    measured family and size as well (seed + 3, train words with ``split``): the cross-task
    subspace test (Table 2) estimates the source's Δ_1 … Δ_3 on 4 pairs of one family and
    subtracts the measured family's own binding IDs.

    ``hops`` (``onehop`` only): the hop sentences each question states, binding-iclr's
    ``num_qn_context`` (4 for its factorization test, 2 for position, 3 for means and cyclic:
    ``scripts/run_experiment.py:21, 91, 134, 200, 617``): the context's capitals first, then its
    source's, then others of the same words, each with its own colour. Default: the context's and
    the source's (2 × n_pairs; so that every substituted country has an answer). With ``split``
    the estimate contexts' colours come from the first half of the colours, as the repository's
    train vocabulary (``onehop.py:39-40``)."""
    if isinstance(n_pairs, int) and n_pairs < 2:
        raise TaskError(f"binding needs at least 2 pairs per context (got {n_pairs})")
    check_range("n_contexts", n_contexts, 1)
    check_range("n_estimate", n_estimate, 1)
    check_choice("family", family, list(FAMILIES))
    f = FAMILIES[family]
    m = n_pairs if estimate_pairs is None else estimate_pairs
    source_family = family if estimate_family is None else estimate_family
    if estimate_pairs is not None:
        check_range("estimate_pairs", estimate_pairs, 2)
    if source_family not in FAMILIES:
        raise TaskError(f"estimate_family must be one of {', '.join(FAMILIES)} (got {estimate_family!r})")
    g = FAMILIES[source_family]
    if split:
        _check(n_pairs, family, 1)
        own_train, train = train_words(f, True), train_words(g, True)
        test = (f.entities[len(own_train[0]):], f.attributes[len(own_train[1]):])
        if n_pairs > min(map(len, test)):
            raise TaskError(f"with split=True the {family} family has test words for at most {min(map(len, test))} "
                            f"pairs (got n_pairs={n_pairs})")
        if m > min(map(len, train)):
            raise TaskError(f"with split=True the {source_family} family has train words for at most "
                            f"{min(map(len, train))} pairs per estimate context (got estimate_pairs={m})")
        rng_c, rng_e, rng_b = random.Random(seed), random.Random(seed + 1), random.Random(seed + 3)
        contexts = [_draw(rng_c, n_pairs, family, *test) for _ in range(n_contexts)]
        estimate = [_draw(rng_e, m, source_family, *train) for _ in range(n_estimate)]
        base = lambda: [_draw(rng_b, n_pairs, family, *own_train) for _ in range(n_estimate)]  # noqa: E731
    else:
        test = (f.entities, f.attributes)
        contexts = sample_contexts(n_contexts, n_pairs, seed, family)
        if estimate_pairs is not None:
            _check(m, source_family, 1)
        estimate = sample_contexts(n_estimate, m, seed + 1, source_family)
        base = lambda: sample_contexts(n_estimate, n_pairs, seed + 3, family)  # noqa: E731
    base_estimate = tuple(base()) if (source_family != family or m != n_pairs) else ()
    rng = random.Random(seed + 2)
    # source contexts (new words at the same positions) where the words suffice; the measures that
    # use them say so when there are none
    sources = () if 2 * n_pairs > min(map(len, test)) else tuple(
        BindingContext(tuple(rng.sample([e for e in test[0] if e not in c.entities], n_pairs)),
                       tuple(rng.sample([a for a in test[1] if a not in c.attributes], n_pairs)), family)
        for c in contexts)
    if hops is not None:
        if not (f.hop or g.hop):
            raise TaskError(f"hops applies to a family whose question states hops (onehop), not {family!r}")
        fewest = max(n_pairs, m) if g.hop and f.hop else n_pairs if f.hop else m
        colours = len(FAMILIES["onehop"].hop_values) // (2 if split else 1)
        check_range("hops", hops, fewest, min(colours, min(map(len, (test[1], train_words(g, split)[1])))))
    if f.hop or g.hop:  # ONEHOP: each question states the hops of its context's and its source's attributes
        rng = random.Random(seed + 4)
        contexts = [with_hops(rng, c, sources[i].attributes if sources else (), hops, test[1])
                    for i, c in enumerate(contexts)]
        sources = tuple(replace(s, hops=c.hops) for s, c in zip(sources, contexts))
        train_colours = (lambda v: v[:len(v) // 2]) if split else (lambda v: None)  # noqa: E731
        estimate = [with_hops(rng, c, (), hops, train_words(g, split)[1], train_colours(g.hop_values))
                    for c in estimate]
        base_estimate = tuple(with_hops(rng, c, (), hops, train_words(f, split)[1], train_colours(f.hop_values))
                              for c in base_estimate)
    params = {"n_contexts": n_contexts, "n_pairs": n_pairs, "n_estimate": n_estimate, "seed": seed}
    if family != "cities":  # results of the default family keep their old task_params
        params["family"] = family
    if split:
        params["split"] = True
        if f.hop or g.hop:  # the estimate contexts' hop colours are the first half (since 2026-12-07)
            params["split_colours"] = True
    if estimate_family is not None and estimate_family != family:
        params["estimate_family"] = estimate_family
    if estimate_pairs is not None and estimate_pairs != n_pairs:
        params["estimate_pairs"] = estimate_pairs
    if hops is not None:
        params["hops"] = hops
    return BindingContexts("binding", params, tuple(contexts), tuple(estimate), sources, base_estimate)


def train_words(family: Family, split: bool) -> tuple[Sequence[str], Sequence[str]]:
    """The entities and attributes estimate contexts are drawn from: the first halves with
    ``split`` (binding-iclr's ``train_test_split``), else all."""
    if not split:
        return family.entities, family.attributes
    return family.entities[:len(family.entities) // 2], family.attributes[:len(family.attributes) // 2]


def _draw(rng: random.Random, n: int, family: str, entities: Sequence[str], attributes: Sequence[str]) -> BindingContext:
    return BindingContext(tuple(rng.sample(list(entities), n)), tuple(rng.sample(list(attributes), n)), family)
