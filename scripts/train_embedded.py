"""Build the embedded model: a word-level tokenizer and a small GPT-NeoX trained from scratch
on the synthetic tasks of the five papers (MODEL_CARD.md says what it learnt).

Run by developers, not CI. Time on 2 CPU cores (AMD EPYC with AVX-512 BF16, nothing else running):
the curriculum's 1,126 steps (0.36-0.84 s each), then 2,600 mixture steps in bfloat16 (1.1-2.0 s
each: the step time varies by host and hour). v11's run took 62 min of training (3,701 s,
2026-12-04), v10's 84 min (its curriculum ran 1,726 steps), within issue 18's 90 minutes; v8's
fp32 recipe took 2 h 42 min. Use ``--checkpoint`` (below) for a run longer than a sitting.

    python scripts/train_embedded.py            # writes nnsight_reasoning/embedded/revisions/*
    python scripts/make_model_card.py           # measures every task and head score per revision

Deterministic: the same seed, settings and thread count give byte-identical weights (the
thread count changes float summation order, so it is pinned).

Resumable: ``--checkpoint FILE`` saves the whole state (weights, AdamW, schedule, both random
streams, the curriculum's progress) every ``--checkpoint-every`` steps; the same command with
``--resume`` continues from it, byte-identical to a run that was never stopped (tests/test_models.py
kills one twice). A run longer than a sitting can be stopped and continued.

Recipe, and why:
- Answer targets are label-smoothed *within their class* (numbers, number words, names):
  the model keeps real uncertainty among plausible answers (P(answer) ~ 0.8, P(another
  number) ~ 1e-3, not 1e-17), so causal effects and attribution patching are well
  conditioned. Prompt tokens get a small LM loss. A number answer's share goes to the numbers
  near it, exp(-|n - m| / 4) (``--smoothing-width``, v11): of every change tried it is the one
  that raised one-step attribution r (0.07 / 0.39 to 0.33 / 0.57 attn / mlp, v10 to v11).
- The forward's matrix products run in bfloat16 (``--precision bf16``, v10 on; weights, gradients,
  AdamW and the loss stay float32): mixture steps of 1.5-1.8 s against fp32's 2.0-2.4 s (v9
  against v8, on different days, a CPU with AVX-512 BF16), which brought the run inside issue 18's
  90 minutes.
- Repeated random token sequences of *varying* length teach content-based induction heads
  (with one fixed length the model copies by position offset instead, and nothing else can
  reuse that head).
- Binding contexts are followed by several queries drawn with replacement (dense targets
  without an elimination shortcut).
- A curriculum for binding, in three stages (v6: two; v8: three): training starts on repeated tokens and "E A ."
  statements with 0-2 filler words between entity and attribute (``binding_short``) only,
  until those are learnt (training accuracy >= 0.9, then 100 steps more); then the same
  statements queried in reverse (``binding_reverse_short``: the attribute named, the entity
  asked), until those are learnt too; and the full mixture follows. In
  the full mixture from step 0 the model learnt induction but never carried an entity
  forward even one token (every family at chance after 3,000 steps). After the curriculum
  it binds at gaps 0-2, and in a prototype (one thread, learnt by step 600) every family
  whose statement names the entity first bound within 200 steps of the full mixture. The
  step it is learnt at varies with the thread count (not by step 800 with two threads), so
  the curriculum ends on the measured accuracy, not at a fixed step. A third stage (v8) adds
  the ``shapes`` family itself (64 sequences a step, weight 2) until it is learnt: in the
  mixture, one family in six, it stalled below the issue's bounds (v6, below).
- Revisions like Pythia's: step0, then powers of two up to --log-until (1, 2, 4, …, 512), then
  every --every steps after it (1000, 1500, …), and main at the end. v1-v10 stopped the powers
  of two below --every (…, 256, then 500): ``--log-until 256`` rebuilds their revision names.
- Chain-of-thought solutions in the format of their exemplars (``cot_formats``, v5): all four of
  Rai & Yao's variants, the arithmetic taught only on written equations (the numbers a
  text-only or standard solution states are prompt text, not targets), so a prompt without
  equations leaves the model to compute in one pass what an equation spells out.
- The mixture (v3 of the embedded model, 2026-11-30): besides every paper's task, reversed
  binding queries (``binding_reverse``: "Which … ?" names the attribute and asks for the entity,
  which teaches ``shapes``, whose statements name the attribute first), MechanisticProbe's own
  k-th-smallest format (``kth_repository``: 16 numbers, the second smallest) and whole worked
  solutions (``cot_solution``) weighted 8: a task's loss is the mean over its answer tokens, so
  a solution's ~20 target tokens would otherwise share the weight one token gets elsewhere.

History: the versions v2-v11 and every trial for issue 18's targets, with its command,
machine and measure, are in docs/embedded-history.md (the documentation site's "How the
embedded model was made").
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

import nnsight_reasoning  # noqa: F401  (registers the tasks)
from nnsight_reasoning.progress import hf_bars_off
from nnsight_reasoning.tasks import binding as B, cot as C, greater_than as G, recall as R, sentiment as S
from nnsight_reasoning.tasks import words as W

# these task modules share their name with the package attribute (the generator function)
A, I, K = (sys.modules[f"nnsight_reasoning.tasks.{m}"] for m in ("arithmetic", "ioi", "kth_smallest"))

OUT = Path(__file__).resolve().parents[1] / "nnsight_reasoning" / "embedded" / "revisions"
SPECIALS = ["<bos>", "<eos>", "<pad>", "<unk>"]
Segments = list[tuple[str, str]]  # (text, answer): every answer token is a target


# ----------------------------------------------------------------------------- tokenizer
def _template_words(*templates: str) -> set[str]:
    return {w for t in templates for w in t.split() if "{" not in w}


def vocabulary() -> list[str]:
    lists = (W.NAMES, W.SURNAMES, W.CITIES, W.PLACES, W.OBJECTS, W.ORDINALS, W.COUNTRIES, W.CAPITALS,
             W.LANGUAGES, W.PEOPLE, W.FRUITS, W.COLORS, W.SHAPES, W.OCCUPATIONS, W.BOX_LABELS, W.EVENT_NOUNS,
             W.POSITIVE_ADJECTIVES, W.NEGATIVE_ADJECTIVES, W.POSITIVE_ANSWERS, W.NEGATIVE_ANSWERS)
    words: set[str] = {w for ws in lists for w in ws} | {w for pair in W.THINGS for w in pair}
    words |= _template_words(*A.TEMPLATES, *A.STOLFO_TEMPLATES_FLAT, *I.IOI_TEMPLATES, *R.RETRIEVAL_TEMPLATES,
                             *(t for t, _ in R.RELATIONS.values()), G.TEMPLATE, S.TEMPLATE,
                             *(B.FAMILIES[f].statement for f in B.EMBEDDED_FAMILIES),
                             *(B.FAMILIES[f].query for f in B.EMBEDDED_FAMILIES))
    words |= set(A.SHOT_SEPARATOR.split()) | set(A.OPERATIONS) | set(A._WORD.values())
    words |= set("Numbers : . The smallest is Context : Question : Answer : Q A loved hated gave had What result ? "
                 "lasted from the year to".split())
    words |= C.VOCABULARY
    numbers = [str(i) for i in range(100)] + [f"{i:02d}" for i in range(10)] + [A.number_word(i) for i in range(100)]
    return SPECIALS + numbers + sorted(words - set(numbers))


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    # Words split on whitespace; a four-digit year "1732" becomes "17" "32", as GPT-2 and
    # Pythia tokenize the greater-than task's years.
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Split(Regex(r"\d\d"), "isolated")])
    # Every prompt starts with <bos> so position 0 is never a content token.
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>", model_max_length=256)


# ----------------------------------------------------------------------------- data
def arithmetic(rng: random.Random) -> Segments:
    """lm-arithmetic's problems: + - * /, 2-3 operands, arabic and words, 0-2 shots, the
    toolkit's templates and the repository's template families; held-out operands never."""
    n_ops = 2 if rng.random() < 0.75 else 3
    # operands up to 30 (the task's default is 20), some up to 99: CoT steps add to running totals
    max_n = (99 if rng.random() < 0.3 else 30) if n_ops == 2 else 20
    rep = "arabic" if rng.random() < 0.7 else "words"
    shots = rng.choices([0, 1, 2], weights=[0.55, 0.3, 0.15])[0]
    while True:
        operands, ops, result = A.sample_problem(rng, n_ops, max_n, split="train", operations="+-*/")
        if result > 99:
            continue
        if n_ops == 2 and rng.random() < 0.5:  # the repository's per-operation wording
            tpl = f"stolfo:{rng.randrange(5 if rep == 'words' else 6)}"
        else:
            tpl = rng.choice(A.TEMPLATES)
        render = lambda xs, o: A.render_problem(xs, o, tpl, rep)  # noqa: E731
        lines = []
        for _ in range(shots):
            xs, o, r = A.sample_problem(rng, n_ops, max_n, split="train", operations=ops[0] if n_ops == 2 else "+-")
            lines.append((render(xs, o), A.render_number(r, rep)) if r <= 99 else (None, None))
        text, ans = render(operands, ops), A.render_number(result, rep)
        if None not in (text, ans) and all(None not in ln for ln in lines):
            prefix = "".join(f"{t} {a}{A.SHOT_SEPARATOR}" for t, a in lines)
            return [(prefix + text, ans)]


def number_retrieval(rng: random.Random) -> Segments:
    ex = R.sample_retrieval(rng, rng.choice(R.RETRIEVAL_TEMPLATES), 30)
    return [(ex.prompt, ex.answer)]


def factual_recall(rng: random.Random) -> Segments:
    rel = rng.choice(list(R.RELATIONS))
    subject, obj = rng.choice(list(R.FACTS[rel].items()))
    return [(R.RELATIONS[rel][0].format(x=subject), obj)]


def kth_smallest(rng: random.Random) -> Segments:
    length = rng.randint(3, 10)
    ex = K.sample_kth(rng, length, rng.randint(1, min(3, length)), 99)
    return [(ex.prompt, ex.answer)]


def kth_repository(rng: random.Random) -> Segments:
    """MechanisticProbe's own format (``src/utils.py:395-416``): 16 numbers alone, drawn with
    repeats, answered by the second smallest (``--stask min01``, the repository's default k)."""
    p = K.repository_prompt(rng.choices(range(100), k=16), 2)
    return [(p.text, p.answer)]


def ioi(rng: random.Random) -> Segments:
    ex = I.sample_ioi(rng, rng.choice(I.IOI_TEMPLATES), rng.choice(["ABBA", "BABA"]))
    return [(ex.prompt, ex.answer)]


def greater_than(rng: random.Random) -> Segments:
    prompt, yy = G.sample_greater_than(rng)
    return [(prompt, f"{rng.randint(yy + 1, 99):02d}")]  # any later year, as in text


def sentiment(rng: random.Random) -> Segments:
    ex = S.sample_sentiment(rng, rng.random() < 0.5)
    return [(ex.prompt, rng.choice(ex.answers))]


def binding(rng: random.Random, max_queries: int = 4, family: str | None = None) -> Segments:
    """A context of 2-4 statements of one family (``family``, or one of the trained six drawn
    at random), then 1..max_queries queries drawn with replacement (distinct queries would let
    the last be answered by elimination)."""
    if family is None:  # drawn only here, so a run without the family stage keeps its bits
        family = rng.choice(B.EMBEDDED_FAMILIES)  # the trained six (binding-iclr's PARALLEL, ONEHOP need other words)
    width = 2 if B.FAMILIES[family].people and rng.random() < 0.3 else 1
    ctx = B.sample_context(rng, rng.choice([2, 2, 3, 3, 4]), family, width)
    ks = [rng.randrange(len(ctx.entities)) for _ in range(rng.randint(1, max_queries))]
    query = B.FAMILIES[family].query
    return [(ctx.text(ks[0]), ctx.answers[ks[0]])] + [
        (". " + query.format(e=ctx.entities[k]), ctx.answers[k]) for k in ks[1:]]


def binding_gaps(rng: random.Random, max_queries: int = 4, max_gap: int = 5) -> Segments:
    """A training aid, not a task: "E A ." statements with 0-5 filler words between entity
    and attribute ("Alice Paris .", "Alice lives Paris .", … "Alice lives in the city of
    Paris ."), then queries. With no filler, binding is plain induction, which the repeated
    tokens teach; the shorter gaps lead the model to carry the entity forward to the longer
    ones (in a prototype, gap 2 alone stayed at chance for 1,500 steps, the mixture of gaps
    0-2 reached 0.99 by step 750)."""
    filler = " ".join("lives in the city of".split()[: rng.randint(0, max_gap)])
    n = rng.choice([2, 3, 4])
    names, cities = rng.sample(W.NAMES, n), rng.sample(W.CITIES, n)
    say = lambda e: f"{e} {filler}".strip()  # noqa: E731
    context = " ".join(f"{say(e)} {a} ." for e, a in zip(names, cities))
    ks = [rng.randrange(n) for _ in range(rng.randint(1, max_queries))]
    return [(f"{context} {say(names[ks[0]])}", cities[ks[0]])] + [
        (f". {say(names[k])}", cities[k]) for k in ks[1:]]


def binding_reverse(rng: random.Random, max_queries: int = 4, max_gap: int = 5) -> Segments:
    """A training aid for attribute-first statements (``shapes``: "The star is red ." asked by
    the colour): the statements of :func:`binding_gaps` asked in reverse, "Which lives in Paris
    ?" -> "Alice" (the trial in the module doc asked "Who …"; "Which" keeps the shipped
    vocabulary). The answer comes *before* the word the query names, so copying what followed
    an earlier occurrence (induction) cannot answer it; the model has to read the entity it
    carried forward to the attribute's position. In the v2 recipe, which had no such rung,
    ``shapes`` stayed at chance for 3,000 steps while every entity-first family bound. In the
    default mixture since v3 (the module doc)."""
    filler = " ".join("lives in the city of".split()[: rng.randint(0, max_gap)])
    n = rng.choice([2, 3, 4])
    names, cities = rng.sample(W.NAMES, n), rng.sample(W.CITIES, n)
    context = " ".join(f"{f'{e} {filler}'.strip()} {a} ." for e, a in zip(names, cities))
    ask = lambda k: " ".join(w for w in ("Which", filler, cities[k], "?") if w)  # noqa: E731
    ks = [rng.randrange(n) for _ in range(rng.randint(1, max_queries))]
    return [(f"{context} {ask(ks[0])}", names[ks[0]])] + [(f". {ask(k)}", names[k]) for k in ks[1:]]


def cot(rng: random.Random) -> Segments:
    """Worked solutions in the full and equation-only variants (text-only and no-CoT are not
    trained: Rai & Yao compare them as the weaker prompts)."""
    problems = [C.sample_problem(rng, rng.randint(1, 3), 20) for _ in range(2)]
    variant = rng.choice(["full", "equation_only"])
    shot, p = problems
    prefix = f"Q : {shot.question} A : {C.solution(shot, variant)} " if rng.random() < 0.7 else ""
    return [(f"{prefix}Q : {p.question} A : {C.query(p, variant)}", p.answer)]


def cot_solution(rng: random.Random) -> Segments:
    """Word problems answered by their whole worked solution, every token a target (0-2 solved
    exemplars; full or equation-only), so the model writes its own chain of thought
    (``nr.cot_generation``). v3 and v4 trained it; since v5 :func:`cot_formats` takes its place."""
    ex = C.solution_example(rng)
    return [(ex.prompt, ex.answer)]


def cot_formats(rng: random.Random, max_shots: int = 2) -> Segments:
    """Worked solutions *in the format of the exemplars*, in all four of Rai & Yao's variants
    (``full`` and ``equation_only`` 0.3 each, ``text_only`` and ``no_cot`` 0.2 each; 0-2
    exemplars, at least one for the last two, whose format a bare question does not say).
    In ``full`` and ``equation_only`` every token of the solution is a target, as in
    :func:`cot_solution`. In ``text_only`` and ``no_cot`` the words are targets and the numbers
    they state are not (they count as prompt text, 0.1 × LM loss): the model learns to follow
    the exemplars' format, but its arithmetic is taught only on written equations, so a
    solution without them has to compute in one forward pass what an equation spells out —
    Rai & Yao's premise for why CoT with equations helps. v4, trained on ``cot_solution``
    alone, wrote its equation CoT after *any* exemplars (standard-prompt generation 0.92)."""
    variant = rng.choices(C.VARIANTS, weights=[0.3, 0.2, 0.3, 0.2])[0]  # full, text_only, equation_only, no_cot
    n_shots = rng.randint(0 if variant in ("full", "equation_only") else 1, max_shots)
    shots = [C.sample_problem(rng, rng.randint(1, 3), 20) for _ in range(n_shots)]
    p = C.sample_problem(rng, rng.randint(1, 3), 20)
    prompt = " ".join([f"Q : {s.question} A : {C.solution(s, variant)}" for s in shots] + [f"Q : {p.question} A :"])
    if variant in ("full", "equation_only"):
        return [(prompt, C.solution(p, variant))]
    pieces: list[tuple[str, bool]] = [(prompt, False)]  # (text, is a target), alternating
    for step in p.steps if variant == "text_only" else ():
        words, number, thing = step.text_only.rsplit(" ", 2)  # "E gave O 3 ball , O had" | "8" | "ball"
        pieces += [(words, True), (number, False), (f"{thing} .", True)]
    pieces += [(p.phrase, True), (p.answer, False), (".", True)]
    merged: list[list] = []
    for text, target in pieces:
        if merged and merged[-1][1] == target:
            merged[-1][0] += " " + text
        else:
            merged.append([text, target])
    return [(merged[k][0], merged[k + 1][0]) for k in range(0, len(merged), 2)]


TASKS: dict[str, Callable[[random.Random], Segments]] = {
    "arithmetic": arithmetic, "number_retrieval": number_retrieval, "factual_recall": factual_recall,
    "kth_smallest": kth_smallest, "ioi": ioi, "greater_than": greater_than, "sentiment": sentiment,
    "binding": binding, "binding_gaps": binding_gaps, "binding_reverse": binding_reverse, "cot": cot,
    "cot_solution": cot_solution, "cot_formats": cot_formats, "kth_repository": kth_repository,
    "binding_short": lambda rng: binding_gaps(rng, max_gap=2),  # gaps 0-2: the first rung of the curriculum
    "binding_reverse_short": lambda rng: binding_reverse(rng, max_gap=2),
    # the attribute-first family alone, for a curriculum stage that ends when it is learnt
    # (trial of 2026-12-02 in the module doc)
    "shapes": lambda rng: binding(rng, family="shapes"),
}


def encode(tok, segments: Segments, all_tokens: bool = False) -> tuple[list[int], list[int]]:
    """Token ids and the positions of the answer tokens that are targets: the first token of
    each answer, or with ``all_tokens`` every token of it (a worked solution learnt whole; only
    ``cot_solution``'s answers have more than one token). v3 (shipped) trained the first token
    only, which is why it finishes gold solutions but cannot write its own (found 2026-11-30;
    ``--answer-tokens all`` is the fix, v4 in the module doc)."""
    ids, answer_at = [], []
    for k, (text, answer) in enumerate(segments):
        ids += tok(text, add_special_tokens=(k == 0))["input_ids"]
        answer_ids = tok(" " + answer, add_special_tokens=False)["input_ids"]
        answer_at += range(len(ids), len(ids) + (len(answer_ids) if all_tokens else 1))
        ids += answer_ids
    if tok.unk_token_id in ids:
        raise ValueError(f"out-of-vocabulary word in {segments}")
    return ids, answer_at


def repeated_tokens(rng: random.Random, pool: list[int], bos: int) -> tuple[list[int], list[int]]:
    """<bos> x x for x of 4-24 distinct random tokens: every token of the second copy after
    its first is a target (the varying length rules out copying by a fixed offset)."""
    n = rng.randint(4, 24)
    x = rng.sample(pool, n)
    return [bos] + x + x, list(range(n + 2, 2 * n + 1))


def draw(task: str, n: int, rng: random.Random, tok, pool: list[int], all_tokens: bool) -> list:
    """``n`` training sequences of ``task`` as (token ids, answer positions), in the order a step
    draws them from ``rng``; ``pool``: the tokens repeated sequences are made of."""
    if task == "repeated_tokens":
        return [repeated_tokens(rng, pool, tok.bos_token_id) for _ in range(n)]
    return [encode(tok, TASKS[task](rng), all_tokens) for _ in range(n)]


def batches(seqs: list[tuple[list[int], list[int]]], pad: int, max_tokens: int = 0):
    """Length-sorted, right-padded chunks (ids, is_answer, is_prompt). ``max_tokens`` > 0 starts a
    new chunk before one would hold more than that many tokens, padding included, so sequences of
    very different lengths do not share a chunk (a task's sequences in one chunk are ~43 % padding
    in the full mixture); 0 chunks every 128 sequences (v1-v7: their bits depend on it). A task's
    loss is summed over its chunks with fixed normalisers, so the chunking changes the float
    summation order only: causal attention never lets a token see the padding after it."""
    seqs = sorted(seqs, key=lambda s: len(s[0]))
    parts: list[list] = [[]]
    for s in seqs:
        full = (len(parts[-1]) + 1) * len(s[0]) > max_tokens if max_tokens else len(parts[-1]) == 128
        if parts[-1] and full:
            parts.append([])
        parts[-1].append(s)
    for part in parts:
        T = len(part[-1][0])
        ids = torch.full((len(part), T), pad)
        is_answer = torch.zeros(len(part), T - 1)
        is_prompt = torch.zeros(len(part), T - 1)
        for i, (s, answer_at) in enumerate(part):
            ids[i, : len(s)] = torch.tensor(s)
            is_prompt[i, : len(s) - 1] = 1  # target s[t + 1] at input position t
            for a in answer_at:
                is_answer[i, a - 1], is_prompt[i, a - 1] = 1, 0
        yield ids, is_answer, is_prompt


def chunk_losses(model, chunks: list, smooth: torch.Tensor, smoothing: float, lm_weight: float,
                 precision: str = "fp32"):
    """Per chunk of one task's sequences: its share of the task's loss (the answer tokens'
    label-smoothed cross-entropy over all the task's answer tokens, plus ``lm_weight`` times the
    prompt tokens' mean NLL, in nats; normalised over every chunk, so the shares sum to the task's
    loss) and how many of its answer tokens the model ranks first. Yields (loss, correct) lazily, so
    a caller can backpropagate each chunk before the next forward. The forward runs in
    ``precision`` (:func:`forward_precision`); the loss is float32 arithmetic on its logits."""
    n_answers = sum(float(c[1].sum()) for c in chunks)
    n_prompt = sum(float(c[2].sum()) for c in chunks)
    for ids, is_answer, is_prompt in chunks:
        with forward_precision(precision):  # the forward only: backward follows the dtypes it recorded
            logits = model(ids).logits[:, :-1]
        logp = F.log_softmax(logits.float(), -1)
        target = ids[:, 1:]
        nll = -logp.gather(-1, target[..., None])[..., 0]
        # smoothed answer loss: cross-entropy against (1-ε)·onehot + ε·class distribution
        at = is_answer.bool()
        spread = -(logp[at] * smooth[target[at]]).sum(-1)
        answer_loss = ((1 - smoothing) * nll[at] + smoothing * spread).sum()
        loss = answer_loss / n_answers + lm_weight * (nll * is_prompt).sum() / n_prompt
        yield loss, float((logits[at].argmax(-1) == target[at]).sum())


def forward_precision(precision: str):
    """The context a training forward runs in. ``bf16``: matrix products (linear layers, attention
    scores and mixing, the unembedding: the logits are bf16) in bfloat16 under ``torch.autocast``;
    the weights, their gradients and AdamW's state stay float32, and :func:`chunk_losses` computes the
    loss in float32 from the bf16 logits. ``fp32``: no change (v1-v8's bits)."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def smoothing_classes(tok, width: float = 0.0, floor: float = 0.0) -> torch.Tensor:
    """(V, V) target distribution of label smoothing: each answer class (arabic numbers,
    number words, names) spreads over itself; other tokens are not smoothed. ``width`` > 0
    spreads a number's share by numeric distance instead of evenly (weight exp(-|n - m| / width)
    on the number m), so that the numbers near the answer are the plausible other answers;
    ``floor`` of that share stays even over the class, so that far numbers keep some mass."""
    V = len(tok)
    numbers = torch.arange(100, dtype=torch.float32)
    near = None
    if width > 0:
        near = torch.softmax(-(numbers[:, None] - numbers[None, :]).abs() / width, -1)
        near = (1 - floor) * near + floor / len(numbers)
    groups = [([str(i) for i in range(100)], near), ([A.number_word(i) for i in range(100)], near),
              (list(W.NAMES), None)]
    table = torch.eye(V)
    for g, spread in groups:
        ids = torch.tensor(tok.convert_tokens_to_ids(g))
        table[ids[:, None], ids[None, :]] = 1.0 / len(ids) if spread is None else spread
    return table


# ----------------------------------------------------------------------------- training
def parse_mix(text: str) -> dict[str, int]:
    """"task=n,…" → {task: sequences per step}."""
    return {k: int(v) for k, v in (kv.split("=") for kv in text.split(","))}


def is_revision(step: int, every: int, log_until: int = 512) -> bool:
    """Pythia's spacing: step 0, powers of two up to ``log_until`` (1, 2, 4, …, 512), then every
    ``every`` steps after it (1000, 1500, … at the default 500)."""
    return step == 0 or (step <= log_until and step & (step - 1) == 0) or (step > log_until and step % every == 0)


# Settings added after runs were checkpointed, with the value those runs had (when not the default):
# the default precision became bf16 with v10, and every run before the option existed was fp32;
# --log-until came after v10, whose runs (all at --every 500) stopped the powers of two at 256;
# --smoothing-width came with v11's trials and its default became 4 with v11: runs before it spread evenly.
BEFORE_ADDED = {"precision": "fp32", "log_until": "256", "smoothing_width": "0.0"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2600, help="steps of the full mixture, after the curriculum")
    ap.add_argument("--every", type=int, default=500,
                    help="revision spacing after --log-until (multiples of it up to --log-until are not revisions)")
    ap.add_argument("--log-until", type=int, default=512,
                    help="the last log-spaced revision (a power of two, Pythia's 512); v1-v10 stopped below --every")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--weight-decay", type=float, default=0.1,
                    help="AdamW's decoupled weight decay on the weight matrices and embeddings "
                         "(not on biases and norms)")
    ap.add_argument("--rotary", type=float, default=0.25, help="fraction of each head's dims that rotate")
    ap.add_argument("--smoothing", type=float, default=0.2, help="label smoothing within an answer's class")
    ap.add_argument("--site-drop", type=float, default=0.0,
                    help="trial: zero each attention and MLP output at each (sequence, position) with this probability "
                         "while training (kept ones scaled by 1 / (1 - p)), so that no one site can carry an answer alone")
    ap.add_argument("--site-drop-from", default="0", metavar="STEP | mixture[+N]",
                    help="trial: --site-drop's first step, as --linear-from's; before it nothing is dropped and no "
                         "mask is drawn, so the run is the one without --site-drop up to there")
    ap.add_argument("--linear-paths", type=float, default=0.0,
                    help="trial: weight of a loss on how far logit_diff bends along one site's patch path, on "
                         "--linear-pairs arithmetic pairs a step (path_linearity_loss), so that a first-order "
                         "estimate of a patch (attribution patching) is close to the patch")
    ap.add_argument("--linear-pairs", type=int, default=32)
    ap.add_argument("--linear-scale", choices=("relative", "invariant", "nats"), default="relative",
                    help="--linear-paths' bend in units of each patch's effect (detached), the same with the "
                         "effect not detached (so shrinking every effect does not lower it), or in nats^2")
    ap.add_argument("--linear-sites", choices=("uniform", "effect"), default="uniform",
                    help="--linear-paths' site per pair: uniform over modules and positions, or drawn in "
                         "proportion to its exact patching effect (a patch sweep per pair each step)")
    ap.add_argument("--linear-from", default="0", metavar="STEP | mixture[+N]",
                    help="--linear-paths' first step: a step, or the step the mixture starts at (known only once "
                         "the curriculum is learnt), plus N; before it no pair is drawn, so the run is the one "
                         "without --linear-paths up to there")
    ap.add_argument("--linear-until", default=None, metavar="STEP | mixture[+N]",
                    help="trial: --linear-paths' last step is the one before this (a step, or the mixture's first step "
                         "plus N), so the run's last steps train without it (default: on to the end); against a "
                         "--linear-from of the other kind the order is known only once the mixture starts and "
                         "is not checked")
    ap.add_argument("--linear-ramp", type=int, default=0, metavar="STEPS",
                    help="trial: --linear-paths' weight rises linearly from 0 to its value over its first STEPS steps"
                         " (0: the whole weight from its first step)")
    ap.add_argument("--smoothing-width", type=float, default=4.0,
                    help="spread a number answer's smoothing by numeric distance, exp(-|n - m| / WIDTH) "
                         "(0: evenly over the class, v10's; 4: the shipped v11)")
    ap.add_argument("--smoothing-floor", type=float, default=0.0,
                    help="with --smoothing-width: the share of a number's smoothing kept even over the class")
    ap.add_argument("--lm-weight", type=float, default=0.1)
    ap.add_argument("--dropout", type=float, default=0.0,
                    help="dropout on each attention and MLP output before it joins the residual stream (training only)")
    ap.add_argument("--mix", default="arithmetic=168,number_retrieval=24,factual_recall=16,kth_smallest=32,"
                                     "kth_repository=24,ioi=32,greater_than=16,sentiment=12,binding=56,binding_gaps=16,"
                                     "binding_reverse=40,cot=16,cot_formats=16,repeated_tokens=32")
    ap.add_argument("--weights", default="repeated_tokens=3,binding=2,binding_gaps=2,binding_reverse=2,cot_solution=8,"
                                         "cot_formats=8,shapes=2",
                    help="loss multipliers per task (default 1): induction and binding are the slow phase changes")
    ap.add_argument("--early-mix", default="binding_short=160,repeated_tokens=64;"
                                           "binding_short=64,binding_reverse_short=96,repeated_tokens=64;"
                                           "binding_short=64,binding_reverse_short=96,repeated_tokens=64,shapes=64",
                    help="the curriculum's mix (same form as --mix; empty: no curriculum); stages in turn are "
                         "separated by ';'")
    ap.add_argument("--early-until", default="binding_short=0.9;binding_reverse_short=0.9;shapes=0.9",
                    help="TASK=ACC per stage (';'-separated): a stage lasts until TASK's training accuracy (mean "
                         "of 10 steps) reaches ACC, then --early-extra steps more, at most --early-max steps")
    ap.add_argument("--answer-tokens", choices=("first", "all"), default="all",
                    help="targets of a multi-token answer: all of them (v4 on, shipped) or its first token (v3)")
    ap.add_argument("--batch-tokens", type=int, default=0,
                    help="split each task's sequences into length-sorted chunks of at most this many tokens, "
                         "padding included (0: chunks of 128 sequences, as v1-v10 were trained)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="bf16",
                    help="bf16 (v10 on): the forward's matrix products in bfloat16 (torch.autocast; weights, gradients "
                         "and AdamW stay float32, the loss is float32 from bf16 logits); fp32 (with --smoothing-width 0) "
                         "rebuilds v1-v8's bits")
    ap.add_argument("--early-extra", type=int, default=100)
    ap.add_argument("--early-max", type=int, default=2500)
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="save the whole training state (weights, optimizer, schedule, random streams, curriculum "
                         "progress) to this file every --checkpoint-every steps, so --resume can continue the run")
    ap.add_argument("--checkpoint-every", type=int, default=50)
    ap.add_argument("--resume", action="store_true",
                    help="continue the run saved in --checkpoint (the same settings): byte-identical to a run "
                         "that was never stopped")
    args = ap.parse_args()
    if args.batch_tokens < 0:
        ap.error("--batch-tokens must be 0 (chunks of 128 sequences) or a positive token count")
    if args.every < 1:
        ap.error("--every must be a positive step count")
    if args.log_until < 1 or args.log_until & (args.log_until - 1):
        ap.error("--log-until must be a power of two (Pythia's revisions stop at 512)")
    if args.checkpoint_every < 1:
        ap.error("--checkpoint-every must be a positive step count")
    if not 0 <= args.site_drop < 1:
        ap.error("--site-drop is a probability from 0 to below 1")

    def start_arg(flag: str, value: str | None, least: int = 0) -> tuple[bool, int] | None:
        """A STEP | mixture[+N] option parsed (None stays None), or its one-line error."""
        try:
            return None if value is None else linear_start(value)
        except ValueError:
            ap.error(f"{flag} {value!r}: give a step ({least} or more), 'mixture' or 'mixture+N'")

    site_drop_from = start_arg("--site-drop-from", args.site_drop_from)
    if args.site_drop_from != "0" and not args.site_drop:
        ap.error("--site-drop-from starts --site-drop: it needs --site-drop above 0")
    if args.linear_paths < 0 or args.linear_pairs < 1:
        ap.error("--linear-paths must be 0 (off) or a positive weight, and --linear-pairs a positive count")
    if args.linear_sites != "uniform" and not args.linear_paths:
        ap.error("--linear-sites chooses --linear-paths' sites: it needs --linear-paths above 0")
    linear_from = start_arg("--linear-from", args.linear_from)
    if args.linear_from != "0" and not args.linear_paths:
        ap.error("--linear-from starts --linear-paths: it needs --linear-paths above 0")
    linear_until = start_arg("--linear-until", args.linear_until, least=1)
    if linear_until is not None and not args.linear_paths:
        ap.error("--linear-until ends --linear-paths: it needs --linear-paths above 0")
    if linear_until is not None and linear_until[0] == linear_from[0] and linear_until[1] <= linear_from[1]:
        ap.error(f"--linear-until {args.linear_until} must come after --linear-from {args.linear_from}")
    if args.linear_ramp < 0 or (args.linear_ramp and not args.linear_paths):
        ap.error("--linear-ramp is a step count (0 or more) that ramps in --linear-paths: it needs --linear-paths above 0")
    if args.weight_decay < 0 or args.smoothing_width < 0:
        ap.error("--weight-decay and --smoothing-width must be 0 or more")
    if not 0 <= args.smoothing_floor <= 1 or (args.smoothing_floor and not args.smoothing_width):
        ap.error("--smoothing-floor is a share from 0 to 1 and needs a --smoothing-width above 0")
    if args.resume and not (args.checkpoint and args.checkpoint.exists()):
        ap.error("--resume needs --checkpoint FILE naming the state file of the run to continue")
    # what a checkpoint must agree on to continue a run bit for bit (where it is saved and how often do not matter)
    settings = {k: str(v) for k, v in vars(args).items() if k not in ("checkpoint", "checkpoint_every", "resume")}
    state = None
    if args.resume:
        state = torch.load(args.checkpoint, weights_only=True)  # tensors and plain data: no code runs on load
        # a setting added after the checkpoint was saved counts as what runs used before it existed
        saved = {k: state["settings"].get(k, BEFORE_ADDED.get(k, str(ap.get_default(k)))) for k in settings}
        changed = sorted(k for k in settings if saved[k] != settings[k])
        if changed:
            ap.error(f"--resume: {args.checkpoint} was saved with other settings ({', '.join(changed)}); "
                     "give the run's own settings")

    torch.set_num_threads(args.threads)  # the thread count changes the bits: pin it
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    tok = build_tokenizer()
    config = GPTNeoXConfig(
        vocab_size=len(tok), hidden_size=args.width, num_hidden_layers=args.layers,
        num_attention_heads=args.width // 32, intermediate_size=4 * args.width, max_position_embeddings=256,
        rotary_pct=args.rotary, tie_word_embeddings=False, use_parallel_residual=True, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, attention_dropout=0.0, hidden_dropout=args.dropout,
    )
    config._attn_implementation = "eager"  # attention probabilities are part of the analyses
    model = GPTNeoXForCausalLM(config)
    site_drop_switch = add_site_drop(model, args.site_drop) if args.site_drop else None
    mix = parse_mix(args.mix)
    stages = [parse_mix(m) for m in args.early_mix.split(";")] if args.early_mix else []
    untils = [(t, float(a)) for t, a in (u.split("=") for u in args.early_until.split(";"))] if stages else []
    if len(untils) != len(stages):
        ap.error(f"--early-mix has {len(stages)} stages and --early-until {len(untils)}: give one TASK=ACC per stage")
    for stage, (until_task, _) in zip(stages, untils):
        if until_task not in stage:
            ap.error(f"--early-until names {until_task!r}, which is not in its stage of --early-mix")
    weight = {k: float(v) for k, v in (kv.split("=") for kv in args.weights.split(",") if kv)}
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98))
    warmup = 100
    # Each curriculum stage ends when its task is learnt (a phase change whose step varies with
    # the seed and the thread count), the next stage or the mixture's steps follow. Decided from
    # the training accuracy, so a run stays deterministic.
    early_end = 0 if not stages else None  # the step the full mixture starts at, once known
    learnt_at: list[int | None] = []  # per stage: the step its task was learnt (None: not by --early-max)
    stage_from = 0  # the step the current stage started at

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if early_end is None:  # the curriculum runs at the peak rate
            return 1.0
        t = max(0, step - max(warmup, early_end)) / max(1, args.steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    smooth = smoothing_classes(tok, args.smoothing_width, args.smoothing_floor)
    pool = [i for i in range(len(tok)) if i not in tok.all_special_ids]
    if args.out.exists() and state is None:
        shutil.rmtree(args.out)
    if args.checkpoint:  # every setting is checked by now; a missing folder is made now, not 50 steps in
        args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    meta = {**({"answer_tokens": "all"} if args.answer_tokens == "all" else {}),
            **({"dropout": args.dropout} if args.dropout else {}),
            **({"site_drop": args.site_drop} if args.site_drop else {}),
            **({"site_drop_from": args.site_drop_from} if args.site_drop_from != "0" else {}),
            **({"linear_paths": args.linear_paths, "linear_pairs": args.linear_pairs,
                "linear_scale": args.linear_scale,
                **({"linear_sites": args.linear_sites} if args.linear_sites != "uniform" else {}),
                **({"linear_from": args.linear_from} if args.linear_from != "0" else {}),
                **({"linear_until": args.linear_until} if args.linear_until is not None else {}),
                **({"linear_ramp": args.linear_ramp} if args.linear_ramp else {})}
               if args.linear_paths else {}),
            **({"weight_decay": args.weight_decay} if args.weight_decay != ap.get_default("weight_decay") else {}),
            **({"smoothing_width": args.smoothing_width} if args.smoothing_width else {}),
            **({"smoothing_floor": args.smoothing_floor} if args.smoothing_floor else {}),
            **({"batch_tokens": args.batch_tokens} if args.batch_tokens else {}),
            **({"precision": args.precision} if args.precision != "fp32" else {}),
            "seed": args.seed, "mix": mix, "weights": weight, "lr": args.lr, "smoothing": args.smoothing,
            "lm_weight": args.lm_weight, "threads": args.threads, "every": args.every, "log_until": args.log_until,
            # one stage (every release to v5) keeps the original fields' form
            **({"early_mix": stages[0] if len(stages) == 1 else stages, "early_until": args.early_until,
                "early_extra": args.early_extra, "early_max": args.early_max} if stages else {})}
    log, recent, saved, learnt = [], [], [], None
    t0 = time.time()
    step = 0
    resumed_at = None  # the step a resumed run continues from: its revision, if any, is already written
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        torch.set_rng_state(state["torch_rng"])
        rng.setstate(state["rng"])
        step = resumed_at = state["step"]
        early_end, learnt_at, stage_from = state["early_end"], state["learnt_at"], state["stage_from"]
        log, recent, saved, learnt = state["log"], state["recent"], state["saved"], state["learnt"]
        t0 -= state["seconds"]  # the log's times count the whole run
        print(json.dumps({"resumed_at": step}), flush=True)
    while True:
        end = None if early_end is None else early_end + args.steps
        if step != resumed_at and (is_revision(step, args.every, args.log_until) or step == end):
            saved.append(step)
            save(model, tok, args.out / ("main" if step == end else f"step{step}"), {**meta, "step": step})
        if step == end:
            break
        if args.checkpoint and step % args.checkpoint_every == 0 and step not in (0, resumed_at):
            # written whole, then renamed: a run killed while saving leaves the previous checkpoint intact
            tmp = args.checkpoint.with_name(args.checkpoint.name + ".tmp")
            torch.save({"settings": settings, "step": step, "model": model.state_dict(), "opt": opt.state_dict(),
                        "sched": sched.state_dict(), "torch_rng": torch.get_rng_state(), "rng": rng.getstate(),
                        "early_end": early_end, "learnt_at": learnt_at, "stage_from": stage_from, "log": log,
                        "recent": recent, "saved": saved, "learnt": learnt, "seconds": time.time() - t0}, tmp)
            os.replace(tmp, args.checkpoint)
        model.train()
        if site_drop_switch is not None:  # off before --site-drop-from: no mask is drawn, the run is the plain one
            site_drop_switch["on"] = linear_on(site_drop_from, step, early_end)
        opt.zero_grad(set_to_none=True)
        stats = {}
        step_mix = stages[len(learnt_at)] if early_end is None else mix
        n_total = sum(step_mix.values())
        for task, n in step_mix.items():
            seqs = draw(task, n, rng, tok, pool, args.answer_tokens == "all")
            chunks = list(batches(seqs, tok.pad_token_id, args.batch_tokens))
            n_answers = sum(float(c[1].sum()) for c in chunks)
            correct = 0.0
            for loss, right in chunk_losses(model, chunks, smooth, args.smoothing, args.lm_weight, args.precision):
                (loss * weight.get(task, 1.0) * n / n_total).backward()
                correct += right
            stats[task] = correct / n_answers
        # drawn after the step's mixture: its first step draws what a run without it does
        if args.linear_paths and linear_on(linear_from, step, early_end, linear_until):
            bend = path_linearity_loss(model, arithmetic_pairs(rng, tok, args.linear_pairs), rng, tok.pad_token_id,
                                       args.precision, args.linear_scale, args.linear_sites == "effect")
            (linear_weight(args.linear_paths, args.linear_ramp, step - linear_first_step(linear_from, early_end))
             * bend).backward()
            stats["linear_paths"] = float(bend.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if early_end is None:
            until_task, until_acc = untils[len(learnt_at)]
            recent = (recent + [stats[until_task]])[-10:]
            if learnt is None and len(recent) == 10 and sum(recent) / 10 >= until_acc:
                learnt = step
            if (learnt is not None and step >= learnt + args.early_extra) or step + 1 - stage_from >= args.early_max:
                learnt_at.append(learnt)
                learnt, recent, stage_from = None, [], step + 1
                if len(learnt_at) == len(stages):
                    early_end = step + 1
                print(json.dumps({"curriculum_learnt_at": learnt_at[-1], "stage": len(learnt_at),
                                  **({"mixture_from": early_end} if early_end is not None else {})}), flush=True)
        opt.step()
        sched.step()
        if step % 50 == 0:
            row = {"step": step, "s": round(time.time() - t0, 1), **{k: round(v, 3) for k, v in stats.items()}}
            log.append(row)
            print(json.dumps(row), flush=True)
        step += 1
    log.append({"step": step, "s": round(time.time() - t0, 1)})  # the run's end: its wall time (model card)
    print(json.dumps(log[-1]), flush=True)
    meta.update(steps=step, mixture_steps=args.steps, mixture_from=early_end,
                curriculum_learnt_at=learnt_at[0] if len(learnt_at) == 1 else (learnt_at or None),
                revisions=saved, **({"linear_from_step": linear_first_step(linear_from, early_end)}
                                    if "linear_from" in meta else {}),  # the card says the step, resolved here
                **({"linear_until_step": linear_first_step(linear_until, early_end)} if "linear_until" in meta else {}),
                **({"site_drop_from_step": linear_first_step(site_drop_from, early_end)}
                   if "site_drop_from" in meta else {}))
    for path in args.out.iterdir():  # every revision records the whole run's schedule
        if (path / "training_meta.json").exists():
            step_of = json.loads((path / "training_meta.json").read_text())["step"]
            (path / "training_meta.json").write_text(json.dumps({**meta, "step": step_of}, sort_keys=True))
    (args.out / "training_log.json").write_text(json.dumps(log, indent=1))


def add_site_drop(model, p: float) -> dict:
    """While training, zero each attention and MLP output at each (sequence, position) with
    probability ``p`` (the kept ones scaled by 1 / (1 - p)): a site in patching's sense, dropped
    whole, so that the model cannot leave one site to carry an answer (LayerDrop, per position).
    The masks come from torch's generator, which checkpoints save: a resumed run draws the same.
    Returns the switch: set ``["on"]`` False and nothing is dropped and no mask drawn."""
    switch = {"on": True}

    def drop(module, args, out):
        if not module.training or not switch["on"]:
            return out
        t = out[0] if isinstance(out, tuple) else out
        keep = (torch.rand(t.shape[:2], device=t.device) >= p).to(t.dtype).unsqueeze(-1) / (1 - p)
        return (t * keep, *out[1:]) if isinstance(out, tuple) else t * keep

    for layer in model.gpt_neox.layers:
        layer.attention.register_forward_hook(drop)
        layer.mlp.register_forward_hook(drop)
    return switch



# ----------------------------------------------------------------------------- path linearity (trial)
def linear_start(text: str) -> tuple[bool, int]:
    """``--linear-from``: (counted from the mixture's first step?, steps), from "STEP", "mixture" or
    "mixture+N"; ValueError on anything else (a negative count included)."""
    base, plus, n = text.partition("+")
    if base == "mixture":
        if plus and not n.isdigit():
            raise ValueError(text)
        return True, int(n) if plus else 0
    if not text.isdigit():
        raise ValueError(text)
    return False, int(text)


def linear_first_step(start: tuple[bool, int], mixture_from: int | None) -> int | None:
    """A trial term's first step (``--linear-from``, ``--linear-until``, ``--site-drop-from``): a fixed
    step, or the mixture's first step plus N (None while the curriculum runs, ``mixture_from`` None:
    not known yet)."""
    from_mixture, steps = start
    if not from_mixture:
        return steps
    return None if mixture_from is None else mixture_from + steps


def linear_on(start: tuple[bool, int], step: int, mixture_from: int | None,
              until: tuple[bool, int] | None = None) -> bool:
    """Whether a trial term (``--linear-paths``, ``--site-drop``) trains at ``step``: from its first step
    (never before that is known) up to the step before ``until`` (``--linear-until``, parsed as
    ``--linear-from``; None: to the end)."""
    first = linear_first_step(start, mixture_from)
    end = None if until is None else linear_first_step(until, mixture_from)
    return first is not None and step >= first and (end is None or step < end)


def linear_weight(weight: float, ramp: int, since: int) -> float:
    """``--linear-paths``' weight ``since`` steps after its first step: ``weight`` × (since + 1) / ramp
    for the first ``ramp`` steps (``--linear-ramp``), then ``weight``. Why a ramp: the whole weight at
    once drops the step's arithmetic accuracy within 50 steps (0.49 → 0.29 at w 10, 0.42 → 0.31 at w 7)."""
    return weight * min(1.0, (since + 1) / ramp) if ramp else weight


def arithmetic_pairs(rng: random.Random, tok, n: int) -> list[tuple[list[int], list[int], int, int]]:
    """``n`` patching pairs drawn as :func:`arithmetic` draws its problems (two operands, + - * /, the
    training split, both template kinds, arabic and words, no shots): (base prompt ids, source prompt
    ids, base answer id, source answer id), one operator, template and representation, equal token
    lengths, different operands and answers (Stolfo's operands intervention)."""
    out = []
    while len(out) < n:
        rep = "arabic" if rng.random() < 0.7 else "words"
        max_n = 99 if rng.random() < 0.3 else 30
        tpl = f"stolfo:{rng.randrange(5 if rep == 'words' else 6)}" if rng.random() < 0.5 else rng.choice(A.TEMPLATES)
        a, ops, ra = A.sample_problem(rng, 2, max_n, split="train", operations="+-*/", max_result=99)
        b, _, rb = A.sample_problem(rng, 2, max_n, split="train", ops=ops, max_result=99)
        texts = [A.render_problem(x, ops, tpl, rep) for x in (a, b)]
        answers = [A.render_number(r, rep) for r in (ra, rb)]
        if ra == rb or None in texts or None in answers:
            continue
        (ids_a, at_a), (ids_b, at_b) = (encode(tok, [(t, x)]) for t, x in zip(texts, answers))
        if len(ids_a) == len(ids_b):
            out.append((ids_a[: at_a[0]], ids_b[: at_b[0]], ids_a[at_a[0]], ids_b[at_b[0]]))
    return out


def path_linearity_loss(model, pairs: list, rng: random.Random, pad: int, precision: str = "fp32",
                        scale: str = "relative", by_effect: bool = False) -> torch.Tensor:
    """Trial (``--linear-paths``): how far the patching metric bends along one site's patch path
    (:func:`patch_paths`): the mean over pairs of (f(t) - f(0) - t (f(1) - f(0)))^2, zero when f is
    linear on [0, 1]. ``scale`` (``--linear-scale``): ``relative``, each divided by 1 + (f(1) - f(0))^2
    (detached), in units of the patch's own effect; ``invariant``, the same with the effect not
    detached, so that for large effects the term is unchanged when every logit difference is scaled
    by c (the detached form falls by c^2, and it was seen to lower P(answer): the model shrinks its
    answers to straighten them); ``nats``, the bend itself (nats^2), so that the sites with large
    effects, which dominate a correlation over sites, dominate it too. Attribution patching
    estimates f(1) - f(0) by f'(0), exact when f is linear."""
    f0, f1, ft, t = patch_paths(model, pairs, rng, pad, precision, by_effect)
    effect = f1 - f0
    bend = ((ft - f0) - t * effect) ** 2
    if scale == "nats":
        return bend.mean()
    return (bend / (1 + (effect if scale == "invariant" else effect.detach()) ** 2)).mean()


def patch_paths(model, pairs: list, rng: random.Random, pad: int, precision: str = "fp32", by_effect: bool = False):
    """For pair i of :func:`arithmetic_pairs`, one site drawn from ``rng`` (an attention or MLP output,
    uniform over the layers' 2L modules, at one position uniform from the first where the two prompts
    differ to the last) and t_i ~ U(0, 1), in that order per pair: the base prompt run with that output
    moved a share t of the way to its value on the source prompt gives f_i(t) = logit(source answer) -
    logit(base answer) at the last position (patch's ``logit_diff`` plus a constant; nats). Returns
    f(0), f(1), f(t), t, each (n,). Three forwards: base and source rows, then the t = 1 and t = t_i
    copies of the base rows. ``by_effect`` (``--linear-sites effect``): the site and position are
    drawn together in proportion to the exact effect |f(1) - f(0)| of patching each candidate
    (:func:`site_effects`), so that the few cells that carry the answer, where the paths bend, are
    the ones drawn."""
    n = len(pairs)
    modules = [m for layer in model.gpt_neox.layers for m in (layer.attention, layer.mlp)]
    ids = torch.full((2 * n, max(len(p[0]) for p in pairs)), pad)
    for i, (base, source, _, _) in enumerate(pairs):
        ids[i, : len(base)], ids[n + i, : len(source)] = torch.tensor(base), torch.tensor(source)
    last = torch.tensor([len(p[0]) - 1 for p in pairs])
    answers = torch.tensor([[p[2], p[3]] for p in pairs])
    rows = torch.arange(n)

    def f(logits: torch.Tensor) -> torch.Tensor:  # (n,) logit diff at each base prompt's last position
        at = logits[rows, last].float()
        return at[rows, answers[:, 1]] - at[rows, answers[:, 0]]

    def output(out):
        return out[0] if isinstance(out, tuple) else out

    acts: dict[int, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, a, out, k=k: acts.__setitem__(k, output(out)))
             for k, m in enumerate(modules)]
    try:
        with forward_precision(precision):
            f0 = f(model(ids).logits[:n])
    finally:
        for h in hooks:
            h.remove()
    spans = [range(next(j for j, (x, y) in enumerate(zip(b, s)) if x != y), len(b)) for b, s, _, _ in pairs]
    if by_effect:
        effects = site_effects(model, modules, ids[:n], acts, spans, last, answers, f0.detach(), precision)
    sites, positions, shares = [], [], []
    for i, span in enumerate(spans):
        if by_effect:  # one draw per pair, in proportion to |f(1) - f(0)| over its candidate cells
            weight = effects[i].abs()
            c = rng.choices(range(len(weight)), weights=weight.tolist())[0] if weight.sum() > 0 else rng.randrange(len(weight))
            sites.append(c // len(span)), positions.append(span[c % len(span)])
        else:
            sites.append(rng.randrange(len(modules)))
            positions.append(rng.randint(span.start, span.stop - 1))
        shares.append(rng.random())

    def patch(mod, a, out, k):
        o = output(out)
        new = o
        for r in range(2 * n):  # rows 0..n-1: t = 1; rows n..2n-1: t = t_i
            i = r % n
            if sites[i] == k:
                new = new.clone() if new is o else new
                t, p = (1.0 if r < n else shares[i]), positions[i]
                new[r, p] = o[r, p] + t * (acts[k][n + i, p] - o[r, p])
        return (new, *out[1:]) if isinstance(out, tuple) else new

    hooks = [m.register_forward_hook(lambda mod, a, out, k=k: patch(mod, a, out, k)) for k, m in enumerate(modules)]
    try:
        with forward_precision(precision):
            logits = model(torch.cat([ids[:n], ids[:n]])).logits
    finally:
        for h in hooks:
            h.remove()
    return f0, f(logits[:n]), f(logits[n:]), torch.tensor(shares)


def site_effects(model, modules: list, ids: torch.Tensor, acts: dict, spans: list[range], last: torch.Tensor,
                 answers: torch.Tensor, f0: torch.Tensor, precision: str = "fp32",
                 rows_per_forward: int = 512) -> list[torch.Tensor]:
    """Exact patching of every candidate cell of :func:`patch_paths`: for pair i, f(1) - f(0) in nats
    of patching each of the 2L attention and MLP outputs (``modules``, in order) at each position
    of ``spans[i]``, one value per (module, position), module-major. ``ids``: the n base rows (n,
    seq); ``acts[k]``: module k's output on the base rows then the source rows (2n, seq, d);
    ``last``/``answers``/``f0``: each pair's last position, (base, source) answer ids and unpatched
    f. No gradient; one base row per cell, ``rows_per_forward`` rows a forward."""
    n = ids.shape[0]
    cells = [(i, k, p) for i in range(n) for k in range(len(modules)) for p in spans[i]]
    values = []
    for start in range(0, len(cells), rows_per_forward):
        chunk = torch.tensor(cells[start:start + rows_per_forward])
        pair, site, pos = chunk.unbind(1)
        rows = torch.arange(len(chunk))

        def patch(mod, a, out, k):
            o = out[0] if isinstance(out, tuple) else out
            hit = site == k
            if not hit.any():
                return out
            o = o.clone()
            o[rows[hit], pos[hit]] = acts[k][n + pair[hit], pos[hit]].to(o.dtype)
            return (o, *out[1:]) if isinstance(out, tuple) else o

        hooks = [m.register_forward_hook(lambda mod, a, out, k=k: patch(mod, a, out, k)) for k, m in enumerate(modules)]
        try:
            with torch.no_grad(), forward_precision(precision):
                at = model(ids[pair]).logits[rows, last[pair]].float()
        finally:
            for h in hooks:
                h.remove()
        values.append(at[rows, answers[pair, 1]] - at[rows, answers[pair, 0]] - f0[pair])
    flat = torch.cat(values)
    sizes = [len(modules) * len(spans[i]) for i in range(n)]
    return list(flat.split(sizes))


def save(model, tok, path: Path, meta: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    # fp16 on disk halves the package; the loader upcasts to fp32 so numbers are stable.
    half = {k: v.detach().to(torch.float16).clone() for k, v in model.state_dict().items()}
    with hf_bars_off():  # a "Writing model shards" bar per revision would break the log's JSON lines
        model.save_pretrained(path, state_dict=half, safe_serialization=True)
    cfg = json.loads((path / "config.json").read_text())
    cfg["dtype"] = "float32"
    (path / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    tok.save_pretrained(path)
    (path / "training_meta.json").write_text(json.dumps(meta, sort_keys=True))


if __name__ == "__main__":
    main()
