"""Measure the embedded model per task per revision and write card.json + MODEL_CARD.md.

    python scripts/make_model_card.py

Every number in the card is measured here: accuracy and mean P(answer) from ``nr.evaluate``
with the settings stored beside them in card.json (so ``reason-interp evaluate --revision R
--task T --n-prompts N --seed S --param k=v`` reproduces each, and tests/test_models.py
checks that it does), and the best head's previous-token, duplicate-token and induction
scores from ``nr.head_scores`` on repeated random tokens.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import nnsight_reasoning as nr
from nnsight_reasoning import embedded
from nnsight_reasoning.tasks.binding import FAMILIES

N, SEED = 500, 2026
HEAD_DATA = {"n_sequences": 32, "seq_len": 20, "seed": SEED}
HEAD_SCORES = ("previous_token", "duplicate_token", "induction")
EVALS: dict[str, tuple[str, dict]] = {  # card row -> (task, parameters)
    "arithmetic": ("arithmetic", {}),
    "arithmetic_heldout": ("arithmetic", {"split": "heldout"}),
    "arithmetic_words": ("arithmetic", {"representation": "words"}),
    "arithmetic_3op_2shot": ("arithmetic", {"n_operands": 3, "n_shots": 2}),
    "arithmetic_times_over": ("arithmetic", {"operations": "*/"}),
    "arithmetic_4ops_heldout": ("arithmetic", {"operations": "+-*/", "split": "heldout"}),
    "arithmetic_stolfo_templates": ("arithmetic", {"operations": "+-*/", "templates": "stolfo", "split": "heldout"}),
    "number_retrieval": ("number_retrieval", {}),
    "factual_recall": ("factual_recall", {}),
    "kth_smallest": ("kth_smallest", {}),
    "kth_smallest_8": ("kth_smallest", {"length": 8}),
    "ioi_abba": ("ioi", {"order": "ABBA"}),
    "ioi_baba": ("ioi", {"order": "BABA"}),
    "greater_than": ("greater_than", {}),
    "sentiment": ("sentiment", {}),
    **{f"binding_{f}{'' if n == 2 else '_3'}": ("binding", {"family": f, "n_pairs": n} if f != "cities" or n != 2
                                                   else {}) for f in FAMILIES for n in (2, 3)},
    "binding_cities_width2": ("binding", {"entity_width": 2}),
    "binding_cities_width2_3": ("binding", {"entity_width": 2, "n_pairs": 3}),
    **{f"cot_{v}": ("cot_arithmetic", {"variant": v}) for v in ("full", "equation_only", "text_only", "no_cot")},
}


def measure(rev: str) -> tuple[dict, dict, dict]:
    model = nr.load_model(revision=rev)
    acc, p = {}, {}
    for row, (task, kw) in EVALS.items():
        ds = nr.evaluate(model, nr.tasks.examples(task, N, seed=SEED, **kw), progress=False)
        acc[row], p[row] = round(float(ds.accuracy), 4), round(float(ds.mean_p_answer), 4)
    hs = nr.head_scores(model, nr.tasks.repeated_tokens(**HEAD_DATA, tokenizer=model.tokenizer), progress=False)
    heads = {}
    for score in HEAD_SCORES:
        grid = hs[score].mean("prompt")
        layer, head = np.unravel_index(int(grid.values.argmax()), grid.shape)
        heads[score] = {"max": round(float(grid.max()), 4), "layer": int(layer), "head": int(head)}
    heads["chance"] = round(float(hs["uniform"].sel(score="induction")), 4)
    return acc, p, heads


PATCH_DATA = {"n_prompts": 64, "seed": 0}  # the headline command's pairs: reason-interp patch --task arithmetic


def patching(model) -> dict:
    """How well conditioned patching is at main: the Stolfo IE at the top site (last position)
    and attribution patching (1 gradient step, and 5 IG steps) against exact patching, mlp and
    attn at all positions, logit_diff (Pearson r over every prompt, layer and position)."""
    pairs = nr.tasks.arithmetic(**PATCH_DATA)
    ie = nr.patch(model, pairs, sites=["attn", "mlp"], progress=False)
    top = max(("attn", "mlp"), key=lambda v: float(abs(ie[v].mean("prompt")).max()))
    grid = abs(ie[top].mean("prompt")).isel(position=0)
    layer = int(grid.values.argmax())
    out = {"top_site": f"{top} L{layer}", "median_abs_ie": round(float(abs(ie[top].isel(layer=layer, position=0)).median()), 4),
           "mean_p_base": round(float(ie["clean_p_base"].mean()), 4)}
    exact = nr.patch(model, pairs, sites=["attn", "mlp"], positions="all", metric="logit_diff", progress=False)
    for steps in (1, 5):
        est = nr.patch(model, pairs, sites=["attn", "mlp"], positions="all", metric="logit_diff", method="attribution",
                       ig_steps=steps, progress=False)
        for v in ("attn", "mlp"):
            x, y = exact[v].values.ravel(), est[v].values.ravel()
            ok = np.isfinite(x) & np.isfinite(y)  # positions past a shorter prompt's end are NaN
            out[f"r_{v}_ig{steps}"] = round(float(np.corrcoef(x[ok], y[ok])[0, 1]), 4)
    return out


# The targets, checked on the measurements above: (what, value at main, the bound).
def targets(card: dict) -> list[tuple[str, float, str, bool]]:
    a, p, h, pt = card["accuracy"]["main"], card["mean_p_answer"]["main"], card["head_scores"], card["patching"]
    chance = h["main"]["chance"]
    rows = [("arithmetic accuracy", a["arithmetic"], ">= 0.95"),
            ("arithmetic mean P(answer)", p["arithmetic"], "0.6-0.95"),
            ("median abs(Stolfo IE) at the top site", pt["median_abs_ie"], "0.1-1000"),
            ("attribution r, attn (1 step)", pt["r_attn_ig1"], ">= 0.9"),
            ("attribution r, mlp (1 step)", pt["r_mlp_ig1"], ">= 0.9"),
            ("arithmetic held-out (+-*/)", a["arithmetic_4ops_heldout"], ">= 0.9"),
            ("arithmetic held-out, lm-arithmetic templates", a["arithmetic_stolfo_templates"], ">= 0.9"),
            ("number retrieval", a["number_retrieval"], ">= 0.9"),
            ("factual recall", a["factual_recall"], ">= 0.9"),
            ("k-th smallest of 8", a["kth_smallest_8"], ">= 0.8"),
            ("IOI ABBA", a["ioi_abba"], ">= 0.9"), ("IOI BABA", a["ioi_baba"], ">= 0.9"),
            ("greater-than", a["greater_than"], ">= 0.9"), ("sentiment", a["sentiment"], ">= 0.9")]
    rows += [(f"binding {k[8:]}", a[k], ">= 0.8" if k.endswith("_3") else ">= 0.9") for k in a if k.startswith("binding_")]
    rows += [("CoT full", a["cot_full"], ">= 0.8"), ("CoT equation-only", a["cot_equation_only"], ">= 0.8"),
             ("CoT text-only below equation-only - 0.2", a["cot_text_only"], f"<= {a['cot_equation_only'] - 0.2:.2f}"),
             ("no CoT below equation-only - 0.2", a["cot_no_cot"], f"<= {a['cot_equation_only'] - 0.2:.2f}"),
             ("best induction head at main", h["main"]["induction"]["max"], ">= 0.5"),
             ("best previous-token head at main", h["main"]["previous_token"]["max"], ">= 0.5"),
             ("best induction head at step0 (chance + 0.1)", h["step0"]["induction"]["max"], f"<= {chance + 0.1:.2f}")]

    def ok(v: float, bound: str) -> bool:
        if bound.startswith(">="):
            return v >= float(bound[3:])
        if bound.startswith("<="):
            return v <= float(bound[3:])
        lo, hi = map(float, bound.split("-"))
        return lo <= v <= hi

    return [(what, v, bound, ok(v, bound)) for what, v, bound in rows]


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reuse-revisions", action="store_true",
                    help="keep card.json's per-revision measurements; re-measure patching and redraw the card")
    args = ap.parse_args()
    acc, p_answer, heads = {}, {}, {}
    old = embedded.card() if args.reuse_revisions else {}
    for rev in embedded.revisions():
        if old:
            acc[rev], p_answer[rev], heads[rev] = old["accuracy"][rev], old["mean_p_answer"][rev], old["head_scores"][rev]
            continue
        acc[rev], p_answer[rev], heads[rev] = measure(rev)
        print(rev, json.dumps(acc[rev]), json.dumps(heads[rev]), flush=True)
    model = nr.load_model(revision="main")
    patch = patching(model)
    print("patching", json.dumps(patch), flush=True)
    card = {"parameters": sum(p.numel() for p in model._module.parameters()), "n_prompts": N, "seed": SEED,
            "evals": {k: {"task": t, "params": p} for k, (t, p) in EVALS.items()}, "accuracy": acc,
            "mean_p_answer": p_answer, "head_scores": heads, "head_data": HEAD_DATA, "patching": patch,
            "patch_data": PATCH_DATA,
            "training": json.loads((embedded.revision_path("main") / "training_meta.json").read_text()),
            "size_mb": round(sum(f.stat().st_size for f in embedded.REVISIONS_DIR.rglob("*") if f.is_file()) / 2**20, 1)}
    card["targets"] = [{"target": w, "value": v, "bound": b, "met": m} for w, v, b, m in targets(card)]
    cfg = json.loads((embedded.revision_path("main") / "config.json").read_text())
    (embedded.ROOT / "card.json").write_text(json.dumps(card, indent=1, sort_keys=True) + "\n")
    (embedded.ROOT / "MODEL_CARD.md").write_text(render(card, cfg))


def _table(rows: list[str], revs: list[str], cell) -> str:
    head = "| | " + " | ".join(revs) + " |\n|---|" + "---|" * len(revs) + "\n"
    return head + "".join(f"| {r} | " + " | ".join(cell(rev, r) for rev in revs) + " |\n" for r in rows)


def render(card: dict, cfg: dict) -> str:
    revs = [r for r in embedded.revisions() if r in card["accuracy"]]  # training order (card.json sorts keys)
    rows = list(card["evals"])
    acc = _table(rows, revs, lambda rev, r: f"{card['accuracy'][rev][r]:.2f}")
    pa = _table(rows, ["main"], lambda rev, r: f"{card['mean_p_answer'][rev][r]:.3f}")
    hs = _table(list(HEAD_SCORES), revs, lambda rev, s: f"{card['head_scores'][rev][s]['max']:.2f}")
    where = ", ".join(f"{s} L{card['head_scores']['main'][s]['layer']}H{card['head_scores']['main'][s]['head']}"
                      for s in HEAD_SCORES)
    evals = "".join(f"- `{c}`: task `{e['task']}`, parameters `{json.dumps(e['params'])}`\n"
                    for c, e in card["evals"].items())
    t = card["training"]
    pt = card["patching"]
    goals = "| target | at main | bound | met |\n|---|---|---|---|\n" + "".join(
        f"| {g['target']} | {g['value']:.3g} | {g['bound']} | {'yes' if g['met'] else '**no**'} |\n" for g in card["targets"])
    missed = [g["target"] for g in card["targets"] if not g["met"]]
    return f"""# The embedded model

A small GPT-NeoX (Pythia architecture) trained from scratch by `scripts/train_embedded.py` on
synthetic versions of the five papers' tasks. Default model of every `reason-interp` command;
loads offline with `nr.load_model(revision=...)`. Every number below is measured by
`scripts/make_model_card.py` (card.json holds them with the settings that reproduce them).

## Architecture
{cfg['num_hidden_layers']} layers, d_model {cfg['hidden_size']}, {cfg['num_attention_heads']} heads
(head_dim {cfg['hidden_size'] // cfg['num_attention_heads']}), d_mlp {cfg['intermediate_size']},
rotary fraction {cfg.get('rope_parameters', {}).get('partial_rotary_factor', cfg.get('rotary_pct'))}, parallel
residual, untied embeddings, vocabulary {cfg['vocab_size']} word-level tokens. {card['parameters']:,} parameters;
{len(revs)} revisions in fp16 (loaded as fp32), {card['size_mb']} MB in all.

## Training
{t['steps']} steps, seed {t['seed']}, {t['threads']} threads; sequences per step: `{json.dumps(t['mix'])}`;
each task's loss counts in proportion to its sequences, times `{json.dumps(t.get('weights', {}))}`
(induction and binding are phase changes that a small share of the loss delays).
Answer tokens: cross-entropy with label smoothing {t['smoothing']} *within the answer's class* (numbers,
number words, names), so the model keeps real uncertainty among plausible answers; prompt
tokens: {t['lm_weight']} × LM loss. AdamW lr {t['lr']}, betas (0.9, 0.98), weight decay 0.1, 100
warm-up steps, cosine to 10 %. Revisions at steps {', '.join(map(str, t['revisions']))} (the last is `main`).
The script's docstring gives each task's data.

## Targets (issue 18), measured
{goals}
{"Missed: " + "; ".join(missed) + "." if missed else "Every target is met."}

## Patching at main
The headline command's pairs ({pt['mean_p_base']:.2f} mean P(base answer)): the top site by mean |Stolfo IE| is
{pt['top_site']} (last position), median |IE| {pt['median_abs_ie']:.3g}. Attribution patching against exact
patching (logit_diff, attn and mlp at every position, Pearson r): 1 gradient step attn {pt['r_attn_ig1']:.2f},
mlp {pt['r_mlp_ig1']:.2f}; 5 IG steps attn {pt['r_attn_ig5']:.2f}, mlp {pt['r_mlp_ig5']:.2f}.

## Accuracy per revision (next-token top-1, {card['n_prompts']} prompts each, seed {card['seed']})
{acc}
## Mean P(answer) at main
For tasks with a set of correct answers (greater-than, sentiment) it is the set's probability.
{pa}
## Best head per score and revision
Mean over {card['head_data']['n_sequences']} sequences of {card['head_data']['seq_len']} repeated random tokens
(`nr.head_scores`); uniform attention scores {card['head_scores']['main']['chance']:.2f}. At main: {where}.
{hs}
Rows:
{evals}
Reproduce one number: `reason-interp evaluate --revision main --task arithmetic --n-prompts {card['n_prompts']} --seed {card['seed']} --param split='"heldout"'`.
"""


if __name__ == "__main__":
    main()
