"""Stolfo et al.'s two control tasks: number retrieval and factual recall.

**Number retrieval** (lm-arithmetic's intervention type 11, ``interventions/entity_intervention.py``:
templates :50-57, counts :11, singular/plural :12-16): "Q : I have 3 apples and 5 cars
. How many apples do I have ? A :" -> "3". The repository's eight templates, counts 0..max_n
(two distinct draws), two things from different categories, singular for a count of 1.
Departures: the things come from this vocabulary (15 in 5 categories, lower case), not
``entity_dict.json``; the question names the thing in the plural; template 7's seller is
"Jane" (the repository's "Jasmin" is not in the vocabulary). Pairs (``number_retrieval_pairs``)
are the repository's: one context, the base question asks for the first thing's count (r),
the source question for the second's (r'); the two things' names have equal token length.
``n_shots`` solved exemplars in the pair's template come first, each asking for its first
thing's count (:67-71); the repository draws one set per template, here each pair draws its
own, ended by " . " as the arithmetic task's (``text="repository"``: the repository's own strings,
"…and 5 cars. How many apples do I have? A:", "Jasmin", exemplars ended by a newline, for subword
tokenizers). ``representation="words"`` writes the counts as
number words (:27-29), one hyphenated token each ("twenty-three"). ``ask="category"`` is type 10
(:32-34): the question names the thing's class ("How many fruits"), ``entity_dict.json``'s five
classes (vegetables, fruits, vehicles, animals, tools) for this vocabulary's things.

**Factual recall** (type 20, ``interventions/lama_intervention.py``: relations :8, cloze cut before
[Y] :61-62): relations P36 "The capital
of [X] is", P1376 "[X] is the capital of", P19 "[X] was born in", P20 "[X] died in" and P103
"The native language of [X] is", over *invented* countries and people whose facts exist only
in the embedded model's training data (``FACTS``), so recall measures what it learnt. P279
(subclass of) is left out: it needs a taxonomy the invented world does not have. Pairs
(``factual_recall_pairs``) are the repository's (``lama_intervention.py:74-97``): two facts of
one relation, different single-token objects, subjects of equal token length; r = the base
subject's object, r' = the source subject's.

**LAMA files** (``data=``): the published LAMA layout, as the repository reads it
(``lama_intervention.py:11-30``): a directory with ``relations.jsonl`` (fields ``relation``,
``template``) and ``TREx/<relation>.jsonl`` (fields ``sub_label``, ``obj_label``), or one
TREx ``.jsonl`` file (``predicate_id`` names the relation; the LAMA templates of the
repository's six relations are built in). The repository's relations are used
(``RELS_SUBSET``: P36, P1376, P279, P19, P103, P20) unless ``relation`` names one.
"""
from __future__ import annotations

import random
import re
from typing import Any, Sequence

import json
from pathlib import Path

from .base import (Aligner, Example, PromptPair, PromptPairs, TaskError, TaskInfo, check_choice, check_range,
                   check_vocabulary, generate_aligned, keeps_newlines, register)
from .arithmetic import REPOSITORY_SHOT_END, REPRESENTATIONS, SHOT_SEPARATOR, TEXTS, number_word, token_words
from .words import CAPITALS, CATEGORIES, COUNTRIES, LANGUAGES, NAMES, PEOPLE, THINGS

# ---------------------------------------------------------------------------- number retrieval
#: lm-arithmetic's number-retrieval templates as the repository writes them (entity_intervention.py:50-57)
RETRIEVAL_TEXT = (
    "Q: I have {x} {e1} and {y} {e2}. How many {cls} do I have? A:",
    "Q: Paul has {x} {e1} and {y} {e2}. How many {cls} does Paul have? A:",
    "Q: I can see {x} {e1} and {y} {e2}. How many {cls} are there? A:",
    "Q: I have {x} {e1} and {y} {e2}. How many {cls} are there? A:",
    "Q: Alice received {x} {e1} and {y} {e2}. How many {cls} did she receive? A:",
    "Q: Mark bought {x} {e1} and {y} {e2}. How many {cls} did he buy? A:",
    "Q: Jasmin sold {x} {e1} and {y} {e2}. How many {cls} did she sell? A:",
    "Q: Sarah owns {x} {e1} and {y} {e2}. How many {cls} does she own? A:",
)
#: the same in the toolkit's text: punctuation a word of its own, "Jane" for "Jasmin" (the embedded vocabulary's)
RETRIEVAL_TEMPLATES = tuple(re.sub(r"(?<! )([.?:])", r" \1", t).replace("Jasmin", "Jane") for t in RETRIEVAL_TEXT)
assert {"Paul", "Alice", "Mark", "Jane", "Sarah"} <= set(NAMES)


def _thing(k: int, count: int) -> str:
    return THINGS[k][0] if count == 1 else THINGS[k][1]


def _draw(rng: random.Random, max_n: int) -> tuple[int, int, int, int]:
    """Two things of different categories (THINGS is ordered by category in turn, five of
    three) and their two distinct counts: (i, j, x, y)."""
    i, j = rng.sample(range(len(THINGS)), 2)
    while i % 5 == j % 5:
        i, j = rng.sample(range(len(THINGS)), 2)
    x, y = rng.sample(range(max_n + 1), 2)
    return i, j, x, y


def _count(n: int, representation: str) -> str:
    return str(n) if representation == "arabic" else number_word(n)  # type: ignore[return-value]


_CATEGORY_HINT = ("with ask='category' the category words (fruits, vegetables, vehicles, animals, tools) must be in "
                  "the model's vocabulary, a pair's two of equal token length; the embedded model's word-level "
                  "vocabulary has none of them: use a model with a subword tokenizer (--model, tokenizer=)")
#: What a number-retrieval question names: the thing itself (lm-arithmetic's intervention type 11,
#: "How many apples") or its category (type 10, "How many fruits", ``entity_intervention.py:32-34``).
ASK = ("thing", "category")


def _fill(template: str, i: int, j: int, x: int, y: int, asked: int, representation: str, ask: str = "thing") -> str:
    return template.format(x=_count(x, representation), y=_count(y, representation), e1=_thing(i, x),
                           e2=_thing(j, y), cls=THINGS[asked][1] if ask == "thing" else CATEGORIES[asked % 5])


def sample_retrieval(rng: random.Random, template: str, max_n: int = 20, representation: str = "arabic",
                     ask: str = "thing") -> Example:
    i, j, x, y = _draw(rng, max_n)
    ask_first = rng.random() < 0.5
    return Example(_fill(template, i, j, x, y, i if ask_first else j, representation, ask),
                   _count(x if ask_first else y, representation))


def _retrieval_shots(rng: random.Random, template: str, max_n: int, n_shots: int, representation: str,
                     ask: str = "thing", text: str = "toolkit") -> str:
    """``n_shots`` solved exemplars in ``template``, each asking for its first thing, as the
    repository's (``entity_intervention.py:67-71``: the base string and its count), each ended by
    " . " or, with ``text="repository"``, a newline (:70)."""
    end = REPOSITORY_SHOT_END if text == "repository" else SHOT_SEPARATOR
    shots = ""
    for _ in range(n_shots):
        i, j, x, y = _draw(rng, max_n)
        shots += f"{_fill(template, i, j, x, y, i, representation, ask)} {_count(x, representation)}{end}"
    return shots


def _check_retrieval(max_n: int, n_shots: int, representation: str, ask: str = "thing",
                     text: str = "toolkit", tokenizer: Any | None = None) -> tuple[str, ...]:
    """Refuses bad options; returns the templates of ``text``."""
    check_range("max_n", max_n, 1, 99)
    check_range("n_shots", n_shots, 0, 8)
    check_choice("representation", representation, REPRESENTATIONS)
    check_choice("ask", ask, ASK)
    check_choice("text", text, TEXTS)
    if text == "repository" and n_shots and not keeps_newlines(tokenizer):
        raise TaskError(f"{_TEXT_HINT} (this tokenizer drops the newline that ends each exemplar)")
    return RETRIEVAL_TEXT if text == "repository" else RETRIEVAL_TEMPLATES


_TEXT_HINT = ("text='repository' needs a tokenizer that reads '.', '?' and ':' attached to words and newlines "
              "(GPT-2, GPT-J, Pythia, LLaMA: --model); the embedded model reads text='toolkit'")


def number_retrieval_examples(n: int = 200, seed: int = 0, tokenizer: Any | None = None,
                              max_n: int = 20, n_shots: int = 0, representation: str = "arabic",
                              ask: str = "thing", text: str = "toolkit") -> list[Example]:
    """``n`` prompts, the templates in turn; either of the two counts is asked for."""
    check_range("n", n, 1)
    templates = _check_retrieval(max_n, n_shots, representation, ask, text, tokenizer)
    rng = random.Random(seed)
    out = []
    for k in range(n):
        template = templates[k % len(templates)]
        shots = _retrieval_shots(rng, template, max_n, n_shots, representation, ask, text)
        ex = sample_retrieval(rng, template, max_n, representation, ask)
        out.append(Example(shots + ex.prompt, ex.answer))
    if ask == "thing" and text == "toolkit":
        return out
    return check_vocabulary(out, tokenizer, _CATEGORY_HINT if ask != "thing" else _TEXT_HINT)


def number_retrieval_pairs(n_prompts: int = 64, seed: int = 0, tokenizer: Any | None = None,
                           max_n: int = 20, n_shots: int = 0, representation: str = "arabic",
                           ask: str = "thing", text: str = "toolkit") -> PromptPairs:
    """lm-arithmetic's type-11 pairs: one context "I have x e1 and y e2", the base asks for
    e1 (answer x), the source for e2 (answer y); templates in turn. ``n_shots`` solved
    exemplars in the pair's template come first, shared by base and source; ``representation``
    "words" writes the counts as number words ("three", lm-arithmetic's ``convert_to_words``).
    ``ask="category"``: the question names the thing's category ("How many fruits"), the
    repository's type 10 (the two things are always of different categories; a draw whose two
    category words differ in token length is redrawn, as the repository's prompts must align,
    ``interventions/__init__.py:66-67``, though its type-10 draw does not redraw). The embedded
    model's vocabulary has no category words, so its pairs are refused there; any model with
    a subword tokenizer takes them. ``text="repository"``: the repository's own strings ("Q: I
    have 3 apples and 5 cars. How many apples do I have? A:", "Jasmin", exemplars ended by a
    newline), for subword tokenizers."""
    templates = _check_retrieval(max_n, n_shots, representation, ask, text, tokenizer)

    def sample(rng: random.Random, k: int) -> PromptPair | None:
        template = templates[k % len(templates)]
        shots = _retrieval_shots(rng, template, max_n, n_shots, representation, ask, text)
        i, j, x, y = _draw(rng, max_n)
        return PromptPair(shots + _fill(template, i, j, x, y, i, representation, ask),
                          shots + _fill(template, i, j, x, y, j, representation, ask),
                          _count(x, representation), _count(y, representation))

    hint = "lower max_n (counts must be single tokens)" if ask == "thing" else _CATEGORY_HINT
    if text == "repository":
        hint = f"{_TEXT_HINT}; or {hint}"
    pairs = generate_aligned(sample, n_prompts, seed, tokenizer, hint)
    params = {"n_prompts": n_prompts, "max_n": max_n, "seed": seed}
    if (n_shots, representation) != (0, "arabic"):  # default runs keep the task_params they always had
        params.update(n_shots=n_shots, representation=representation)
    if ask != "thing":
        params["ask"] = ask
    if text != "toolkit":
        params["text"] = text
    return PromptPairs("number_retrieval", params, pairs)


#: Token roles of a number-retrieval prompt, in reading order (lm-arithmetic's position classes for
#: type 11, ``plot-all-tokens.ipynb`` ``add_position_class_int11``, JSON lines 124-154): e_q is the
#: thing the question asks about ("How many apples"); "shots" are the exemplars (a toolkit role).
RETRIEVAL_ROLES = ("shots", "early", "e_q first", "e_q middle", "e_q last", "late", "last")
_QUESTION_VERBS = {"do", "does", "are", "did"}  # the word after {cls} in every RETRIEVAL_TEMPLATES entry


def retrieval_roles(tokens: Sequence[str]) -> list[str]:
    """The role of each token of a number-retrieval prompt: the query is the last "Q :" (before it,
    "shots"); e_q is every token between its "many" and the verb after the thing ("do", "are" …);
    then "early" before e_q, "late" after it, "last" the final token. A one-token e_q is "e_q
    first", as the repository tests the first token before the last. Padding ("") gets "".
    """
    words, n = token_words(tokens)
    questions = [i for i in range(n - 1) if words[i] == "Q" and words[i + 1] == ":"]
    start = questions[-1] if len(questions) > 1 else 0  # exemplars before the query's "Q :"
    many = max((i for i in range(start, n) if words[i] == "many"), default=None)
    # a verb starts a word: with a tokenizer that marks word starts (Ġ, ▁) a bare "do" is a piece
    marked = any(t.startswith(("Ġ", "▁")) for t in tokens)
    end = None if many is None else next((i for i in range(many + 2, n) if words[i] in _QUESTION_VERBS
                                          and (not marked or tokens[i].startswith(("Ġ", "▁")))), None)
    if end is None:
        raise TaskError(f"not a number-retrieval prompt (no 'How many <things> do/does/are/did' question): "
                        f"{' '.join(words[:n])!r}")
    first, last = many + 1, end - 1
    roles = [""] * len(tokens)
    for i in range(n):
        roles[i] = ("shots" if i < start else "early" if i < first else "e_q first" if i == first
                    else "e_q middle" if i < last else "e_q last" if i == last else "last" if i == n - 1 else "late")
    return roles


register(TaskInfo("number_retrieval", "retrieve a count from the context (Stolfo et al. 2023, type 11; type 10 with "
                  "ask=category)",
                  number_retrieval_pairs, number_retrieval_examples,
                  {"n_prompts": (64, "number of prompt pairs (patch)"), "max_n": (20, "largest count (0..max_n)"),
                   "n_shots": (0, "solved exemplars in the prompt's template, before it (shared by base and source)"),
                   "representation": ("arabic", "counts as arabic numerals or number words ('three')"),
                   "ask": ("thing", "what the question names: thing ('How many apples', type 11) | category "
                                    "('How many fruits', type 10)"),
                   "text": ("toolkit", "toolkit ('… cars . How many apples do I have ? A :') | repository (its own "
                                       "strings, '… cars. How many apples do I have? A:'; subword tokenizers)"),
                   "seed": (0, "random seed")}, roles=retrieval_roles, role_order=RETRIEVAL_ROLES))

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
                            relation: str = "all", data: str | None = None) -> list[Example]:
    """``n`` cloze prompts drawn (seeded) from the facts of ``relation`` ("all": every relation),
    of the invented world or of a LAMA directory or file (``data``)."""
    check_range("n", n, 1)
    if data is None:
        check_choice("relation", relation, ["all", *RELATIONS])
        pool = [e for r in (RELATIONS if relation == "all" else [relation]) for e in fact_prompts(r)]
    else:
        pool = [Example(t.format(x=sub), obj) for t, facts in read_lama(data, relation).values() for sub, obj in facts]
    rng = random.Random(seed)
    return [rng.choice(pool) for _ in range(n)]


# LAMA's templates (relations.jsonl) of lm-arithmetic's relations (lama_intervention.py:8)
LAMA_TEMPLATES = {"P36": "The capital of [X] is [Y] .", "P1376": "[X] is the capital of [Y] .",
                  "P279": "[X] is a subclass of [Y] .", "P19": "[X] was born in [Y] .",
                  "P103": "The native language of [X] is [Y] .", "P20": "[X] died in [Y] ."}


def read_lama(path: str | Path, relation: str = "all") -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """relation -> (cloze template cut before [Y], [(sub_label, obj_label), …]) from a LAMA
    directory (relations.jsonl + TREx/*.jsonl) or one TREx .jsonl file; one-line errors."""
    path = Path(path).expanduser()
    if not path.exists():
        raise TaskError(f"no such LAMA file or directory: {path}")
    templates = dict(LAMA_TEMPLATES)
    if path.is_dir():
        rel_file, trex = path / "relations.jsonl", path / "TREx"
        if not rel_file.is_file() or not trex.is_dir():
            raise TaskError(f"{path} is not a LAMA directory: it needs relations.jsonl and TREx/ (or give one TREx "
                            f".jsonl file)")
        for k, row in enumerate(_jsonl(rel_file)):
            if "relation" not in row or "template" not in row:
                raise TaskError(f"{rel_file} line {k + 1}: a relation needs 'relation' and 'template'")
            templates[row["relation"]] = row["template"]
        files = {f.stem: f for f in sorted(trex.glob("*.jsonl"))}
    else:
        files = {None: path}
    wanted = set(LAMA_TEMPLATES) if relation == "all" else {relation}
    facts: dict[str, list[tuple[str, str]]] = {}
    for stem, f in files.items():
        for k, row in enumerate(_jsonl(f)):
            rel = stem or row.get("predicate_id")
            if not rel or "sub_label" not in row or "obj_label" not in row:
                raise TaskError(f"{f} line {k + 1}: a LAMA fact needs 'sub_label', 'obj_label' and (in a single "
                                f"file) 'predicate_id'")
            if rel in wanted:
                facts.setdefault(rel, []).append((str(row["sub_label"]), str(row["obj_label"])))
    if not facts:
        raise TaskError(f"{path} has no facts of {'the relations ' + ', '.join(sorted(wanted)) if relation == 'all' else relation}")
    out = {}
    for rel, pairs in facts.items():
        t = templates.get(rel)
        if t is None or "[X]" not in t or "[Y]" not in t:
            raise TaskError(f"relation {rel} has no template with [X] and [Y]; give a LAMA directory with relations.jsonl")
        out[rel] = (t[: t.index("[Y]")].strip().replace("[X]", "{x}"), pairs)
    return out


def _jsonl(path: Path) -> list[dict]:
    # read by hand, not with datasets' JSON loader: TREx lines carry nested "evidences" whose
    # fields differ between lines (Arrow's schema inference can refuse them), and a bad line is
    # named by its number
    rows = []
    for k, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskError(f"{path} line {k + 1} is not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise TaskError(f"{path} line {k + 1} is not a JSON object")
            rows.append(row)
    return rows


def factual_recall_pairs(n_prompts: int = 64, seed: int = 0, tokenizer: Any | None = None, relation: str = "all",
                         data: str | None = None) -> PromptPairs:
    """lm-arithmetic's type-20 pairs: two facts of one relation (relations in turn) with
    different single-token objects and subjects of equal token length. ``data``: a LAMA
    directory or TREx file (default: the embedded model's invented facts, ``FACTS``)."""
    if data is None:
        check_choice("relation", relation, ["all", *RELATIONS])
        world = {r: (RELATIONS[r][0], list(FACTS[r].items())) for r in (RELATIONS if relation == "all" else [relation])}
    else:
        world = read_lama(data, relation)
    # as the repository, only facts whose object is one token; a relation needs two objects
    aligner = Aligner(tokenizer)
    usable = {r: (t, [f for f in facts if aligner.is_single_token(f[1])]) for r, (t, facts) in world.items()}
    dropped = sorted(r for r, (_, facts) in usable.items() if len({o for _, o in facts}) < 2)
    world = {r: v for r, v in usable.items() if r not in dropped}
    if not world:
        raise TaskError(f"no relation has two facts with different single-token objects for this tokenizer "
                        f"(checked: {', '.join(dropped)})")
    rels = sorted(world)

    def sample(rng: random.Random, k: int) -> PromptPair | None:
        template, facts = world[rels[k % len(rels)]]
        (s1, o1), (s2, o2) = rng.sample(facts, 2)
        if o1 == o2:
            return None
        return PromptPair(template.format(x=s1), template.format(x=s2), o1, o2)

    pairs = generate_aligned(sample, n_prompts, seed, tokenizer,
                             "the relations need facts with single-token objects and subjects of equal length")
    params: dict[str, Any] = {"n_prompts": n_prompts, "relation": relation, "seed": seed}
    if data is not None:
        params["data"] = str(data)
    if dropped:  # said in the results' task_params: these relations could not be used
        params["relations_dropped"] = dropped
    return PromptPairs("factual_recall", params, pairs)


#: Token roles of a cloze prompt, in reading order (lm-arithmetic's position classes for LAMA,
#: ``plot-all-tokens.ipynb`` ``add_position_class_lama``, JSON lines 55-86).
FACT_ROLES = ("early", "subject first", "subject middle", "subject last", "late", "last")


def _cloze_templates() -> list[tuple[list[str], list[str]]]:
    """(words before the subject, words after it) of every cloze template the task writes: the
    invented world's and LAMA's for the repository's relations, longest first."""
    cut = [t[: t.index("[Y]")].strip().replace("[X]", "{x}") for t in LAMA_TEMPLATES.values()]
    parts = {tuple(t.split("{x}")) for t in [r[0] for r in RELATIONS.values()] + cut}
    return sorted(([*map(str.split, p)] for p in parts), key=lambda p: -len(p[0]) - len(p[1]))  # type: ignore[misc]


def fact_roles(tokens: Sequence[str]) -> list[str]:
    """The role of each token of a factual-recall (cloze) prompt: the subject is what lies between
    the words of its relation's template ("The capital of | Zorvia | is"); "subject first",
    "subject middle", "subject last", then "early" before it, "late" after it, "last" the final
    token. A one-token subject is "subject last", as the repository tests the last token before
    the first. A leading special token (``<bos>``, ``<s>``, ``<|endoftext|>``) is "early". Prompts
    of templates not written by this task (another LAMA relation) are refused.
    """
    words, n = token_words(tokens)
    lead = int(bool(words) and re.fullmatch(r"<\|?[^\s<>|]+\|?>", words[0]) is not None)  # <bos>, <s>, <|endoftext|>
    for before, after in _cloze_templates():
        first, last = lead + len(before), n - len(after) - 1
        if first <= last and words[lead:first] == before and words[last + 1:n] == after:
            break
    else:
        raise TaskError(f"{' '.join(words[:n])!r} matches none of the cloze templates of "
                        f"{', '.join(sorted(set(RELATIONS) | set(LAMA_TEMPLATES)))}; in Python, pass roles=")
    roles = [""] * len(tokens)
    for i in range(n):
        roles[i] = ("early" if i < first else "subject last" if i == last else "subject first" if i == first
                    else "subject middle" if i < last else "last" if i == n - 1 else "late")
    return roles


register(TaskInfo("factual_recall", "LAMA-style cloze facts about invented entities (Stolfo et al. 2023, type 20)",
                  factual_recall_pairs, factual_recall_examples,
                  {"n_prompts": (64, "number of prompt pairs (patch)"),
                   "relation": ("all", f"all | {' | '.join(RELATIONS)} (with data: any LAMA relation id)"),
                   "data": (None, "patch: a LAMA directory (relations.jsonl, TREx/) or TREx .jsonl file; default: "
                                  "the embedded model's invented facts"),
                   "seed": (0, "random seed")}, roles=fact_roles, role_order=FACT_ROLES))
