"""Build the embedded model: tokenizer + a small GPT-NeoX trained from scratch.

Run by developers, not CI (about 25 minutes on 2 CPU cores):

    python scripts/train_embedded.py            # writes nnsight_reasoning/embedded/revisions/*
    python scripts/make_model_card.py           # measures accuracy per task per revision

Deterministic: the same seed, settings and thread count give byte-identical weights.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

import sys

import nnsight_reasoning.tasks.arithmetic  # noqa: F401  (the package attribute is the function)
from nnsight_reasoning.tasks.binding import sample_binding
from nnsight_reasoning.tasks.ioi import IOI_TEMPLATES, sample_ioi
from nnsight_reasoning.tasks.kth_smallest import sample_kth
A = sys.modules["nnsight_reasoning.tasks.arithmetic"]
from nnsight_reasoning.tasks.words import CITIES, NAMES, OBJECTS, ORDINALS, PLACES

OUT = Path(__file__).resolve().parents[1] / "nnsight_reasoning" / "embedded" / "revisions"
SPECIALS = ["<bos>", "<eos>", "<pad>", "<unk>"]


# ----------------------------------------------------------------------------- tokenizer
def vocabulary() -> list[str]:
    words: set[str] = set(NAMES) | set(CITIES) | set(PLACES) | set(OBJECTS) | set(ORDINALS)
    for t in A.TEMPLATES + IOI_TEMPLATES:
        words |= {w for w in t.split() if "{" not in w}
    words |= set("Numbers : . The smallest is lives in + - plus minus".split())
    words |= set(A.SHOT_SEPARATOR.split())
    numbers = [str(i) for i in range(100)] + [A.number_word(i) for i in range(100)]
    return SPECIALS + numbers + sorted(words - set(numbers))


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # Every prompt starts with <bos> so position 0 is never a content token.
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>", model_max_length=128)


# ----------------------------------------------------------------------------- data
def sample_arith(rng: random.Random) -> tuple[str, str]:
    n_ops = 2 if rng.random() < 0.7 else 3
    max_n = 30 if n_ops == 2 else 20
    rep = "arabic" if rng.random() < 0.7 else "words"
    tpl = rng.choice(A.TEMPLATES)
    shots = rng.choices([0, 1, 2], weights=[0.55, 0.3, 0.15])[0]
    while True:
        operands, ops, result = A.sample_problem(rng, n_ops, max_n, split="train")
        prefix = A._shots(rng, shots, n_ops, max_n, tpl, rep, "train")
        text, ans = A.render_problem(operands, ops, tpl, rep), A.render_number(result, rep)
        if None not in (prefix, text, ans):
            return prefix + text, ans


def sample_task(task: str, rng: random.Random, progress: float, binding_queries: int = 1) -> list[tuple[str, str]]:
    """One training sequence as (text, answer) segments; every answer token is a target."""
    if task == "arithmetic":
        return [sample_arith(rng)]
    if task == "kth_smallest":
        length = rng.randint(3, 6)
        ex = sample_kth(rng, length, rng.randint(1, 3), 99)
    elif task == "binding" and binding_queries > 1:
        return sample_binding_multi(rng, progress, binding_queries)
    elif task == "binding":
        # Curriculum: two statements first, up to three later.
        ex = sample_binding(rng, 2 if progress < 0.3 or rng.random() < 0.4 else 3)
    else:
        ex = sample_ioi(rng, rng.choice(IOI_TEMPLATES))
    return [(ex.prompt, ex.answer)]


def sample_binding_multi(rng: random.Random, progress: float, max_queries: int) -> list[tuple[str, str]]:
    """A binding context followed by 1..max_queries queries, each a target.

    A single query gives one binding target per sequence, and the prototype (and a first
    run here) stayed at chance with it. Later queries reuse the same context. They are
    drawn *with replacement*: distinct queries let the last one be answered by elimination
    (a second run learnt exactly that shortcut). The first segment has the evaluation format.
    """
    n_pairs = 2 if progress < 0.3 else rng.choice([2, 3, 3])
    ex = sample_binding(rng, n_pairs)
    facts = dict(s.split(" lives in ") for s in ex.prompt.split(" . ")[:-1])
    entities = list(facts)
    segments = [(ex.prompt, ex.answer)]
    for _ in range(rng.randint(0, max_queries - 1)):
        e = rng.choice(entities)
        segments.append((f". {e} lives in", facts[e]))
    return segments


def make_batches(tok, rng, task: str, n: int, progress: float, chunk: int = 128, binding_queries: int = 1):
    """Length-bucketed, right-padded chunks (ids, is_answer, is_prompt) for one task.

    Sorting by length before chunking keeps padding (wasted compute) small: few-shot
    prompts are 3-4x longer than zero-shot ones.
    """
    seqs = []
    for _ in range(n):
        ids, answer_at = [], []
        for k, (text, answer) in enumerate(sample_task(task, rng, progress, binding_queries)):
            ids += tok(text, add_special_tokens=(k == 0))["input_ids"]
            answer_at.append(len(ids))
            ids += tok(" " + answer, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids, ids
        seqs.append((ids, answer_at))
    seqs.sort(key=lambda x: len(x[0]))
    out = []
    for c in range(0, n, chunk):
        part = seqs[c : c + chunk]
        T = len(part[-1][0])
        ids = torch.full((len(part), T), tok.pad_token_id)
        is_answer = torch.zeros(len(part), T - 1)
        is_prompt = torch.zeros(len(part), T - 1)
        for i, (s, answer_at) in enumerate(part):
            ids[i, : len(s)] = torch.tensor(s)
            is_prompt[i, : len(s) - 1] = 1  # target s[t + 1] at input position t
            for a in answer_at:
                is_answer[i, a - 1] = 1
                is_prompt[i, a - 1] = 0
        out.append((ids, is_answer, is_prompt))
    return out


# ----------------------------------------------------------------------------- training
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--save", default="0,250,500,1000,1500,main", help="steps to save; 'main' = final")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--mix", default="arithmetic=384,kth_smallest=128,binding=192,ioi=32")
    ap.add_argument("--lm-weight", type=float, default=0.1)
    ap.add_argument("--binding-queries", type=int, default=3, help="queries per binding context (targets)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)  # the thread count changes the bits: pin it
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    tok = build_tokenizer()
    config = GPTNeoXConfig(
        vocab_size=len(tok), hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=512, max_position_embeddings=128, rotary_pct=1.0,
        tie_word_embeddings=False, use_parallel_residual=True, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, attention_dropout=0.0,
        hidden_dropout=0.0,
    )
    config._attn_implementation = "eager"  # attention probabilities are part of the analyses
    model = GPTNeoXForCausalLM(config)
    mix = {k: int(v) for k, v in (kv.split("=") for kv in args.mix.split(","))}
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=3e-3, betas=(0.9, 0.98))
    warmup = 100

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, args.steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    save_at = {int(s) if s != "main" else args.steps for s in args.save.split(",")}
    if args.out.exists():
        shutil.rmtree(args.out)
    log = []
    t0 = time.time()
    for step in range(args.steps + 1):
        if step in save_at:
            name = "main" if step == args.steps else f"step{step}"
            save(model, tok, args.out / name, meta={"step": step, "seed": args.seed, "mix": mix})
        if step == args.steps:
            break
        model.train()
        opt.zero_grad(set_to_none=True)
        stats = {}
        for task, n in mix.items():
            chunks = make_batches(tok, rng, task, n, step / args.steps, binding_queries=args.binding_queries)
            n_prompt_tokens = sum(float(c[2].sum()) for c in chunks)
            n_answers = sum(float(c[1].sum()) for c in chunks)
            correct = 0.0
            for ids, is_answer, is_prompt in chunks:
                logits = model(ids).logits[:, :-1]
                ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1),
                                     reduction="none").view_as(is_answer)
                loss = (ce * is_answer).sum() / n_answers + args.lm_weight * (ce * is_prompt).sum() / n_prompt_tokens
                (loss * n / sum(mix.values())).backward()
                correct += float(((logits.argmax(-1) == ids[:, 1:]).float() * is_answer).sum())
            stats[task] = correct / n_answers
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0:
            row = {"step": step, "s": round(time.time() - t0, 1), **{k: round(v, 3) for k, v in stats.items()}}
            log.append(row)
            print(json.dumps(row), flush=True)
    (args.out / "training_log.json").write_text(json.dumps(log, indent=1))


def save(model, tok, path: Path, meta: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    # fp16 on disk halves the package; the loader upcasts to fp32 so numbers are stable.
    half = {k: v.detach().to(torch.float16).clone() for k, v in model.state_dict().items()}
    model.save_pretrained(path, state_dict=half, safe_serialization=True)
    cfg = json.loads((path / "config.json").read_text())
    cfg["dtype"] = "float32"
    (path / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    tok.save_pretrained(path)
    (path / "training_meta.json").write_text(json.dumps(meta, sort_keys=True))


if __name__ == "__main__":
    main()
