"""``reason-interp``: commands only parse arguments, call the library and print.

Errors: one line on stderr; exit 2 for bad input, 1 for failures at run time. Set
``REASON_INTERP_DEBUG=1`` to see tracebacks.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from . import circuits, mechanisms, reasoning
from .common import (Harness, Model, OneLineErrors, Param, Revision, Seed, Task, example_data, experiment_command,
                     fail, guard, out, pair_data, show_item, task_params)

app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Mechanistic interpretability of reasoning in language models (nnsight; local or NDIF).")

@app.command()
@experiment_command()
def patch(
    h: Harness,
    task: Task = "arithmetic",
    site: List[str] = typer.Option(["mlp", "attn"], help="site(s) to patch: embed, embed_dim, attn_pattern, "
                                                            "attn_layer_pattern, attn_weights, head, attn, neuron, "
                                                            "mlp, mlp_dim, resid "
                                                            "(repeatable; embed and embed_dim are always patched, "
                                                            "whatever --layer says, and stored at layer -1; *_dim: one "
                                                            "output dimension at a time, lm-arithmetic's 'neurons')"),
    positions: str = typer.Option("last", help="last | all"),
    layer: List[int] = typer.Option([], help="layer(s) to patch (repeatable); default all"),
    n_prompts: int = typer.Option(64, help="number of prompt pairs"),
    seed: Seed = 0,
    intervention_type: Optional[str] = typer.Option(None, help="arithmetic: operands | same_result | operation"),
    n_operands: Optional[int] = typer.Option(None, help="arithmetic: 2 or 3 operands"),
    n_shots: Optional[int] = typer.Option(None, help="arithmetic, number_retrieval: few-shot exemplars"),
    max_n: Optional[int] = typer.Option(None, help="arithmetic: largest operand"),
    representation: Optional[str] = typer.Option(None, help="arithmetic, number_retrieval: arabic | words"),
    template: List[str] = typer.Option([], help="arithmetic: template with {expr} (repeatable)"),
    data: Optional[Path] = typer.Option(None, help="factual_recall: a LAMA directory (relations.jsonl, TREx/) or a "
                                                   "TREx .jsonl file"),
    param: Param = [],
    metric: Optional[str] = typer.Option(None, help="stolfo_ie | absolute | source_increase | relative_source_increase"
                                                    " | same_result | logit_diff; default same_result for pairs with "
                                                    "equal answers, else stolfo_ie"),
    method: str = typer.Option("exact", help="exact (activation patching) | attribution (gradient estimate)"),
    ig_steps: int = typer.Option(1, help="attribution: 1 = plain; m > 1 = integrated gradients over m steps"),
    correct_only: bool = typer.Option(False, "--correct-only", help="only pairs the model answers correctly (base "
                                      "and source); the others get NaN effects, as the paper filters"),
) -> None:
    """Activation patching / causal mediation (Stolfo et al. 2023) over layers and positions;
    --method attribution for the gradient estimate (one forward + backward per batch)."""
    import nnsight_reasoning as nr
    from nnsight_reasoning.errors import UsageError

    if positions not in ("last", "all"):  # typer takes any string; say which option was wrong
        raise UsageError(f"--positions must be last or all (got {positions!r})")
    params = task_params(param, intervention_type=intervention_type, n_operands=n_operands, n_shots=n_shots,
                         max_n=max_n, representation=representation, templates=template or None,
                         data=str(data) if data is not None else None)
    # attribution gets its own default file: it never overwrites exact results
    h.run(nr.patch, pair_data(task, n_prompts, seed, params), kind="patch" if method == "exact" else "attribution",
          task=task, sites=site, positions=positions, metric=metric, method=method, ig_steps=ig_steps,
          layers=layer or None, correct_only=correct_only)


@app.command()
@experiment_command()
def evaluate(
    h: Harness,
    task: Task = "arithmetic",
    n_prompts: int = typer.Option(200, help="number of prompts"),
    seed: Seed = 0,
    param: Param = [],
) -> None:
    """Task performance: accuracy, mean probability and rank of the correct answer.

    With --revisions, over training checkpoints (a learning curve, drawn by `reason-interp plot`).
    """
    import nnsight_reasoning as nr

    h.run(nr.evaluate, example_data(task, n_prompts, seed, param), kind="evaluate", task=task)


@app.command("logit-lens")
@experiment_command()
def logit_lens(
    h: Harness,
    task: Task = "arithmetic",
    n_prompts: int = typer.Option(64, help="number of prompts"),
    seed: Seed = 0,
    layer: List[int] = typer.Option([], help="layer(s) whose output is read (repeatable; -1: the embeddings); "
                                             "default all"),
    top_k: int = typer.Option(10, help="top tokens kept per prompt and layer (Rai & Yao's TOP_K)"),
    read: str = typer.Option("output", help="output (each layer's output) | mid (between attention and MLP: "
                                            "Rai & Yao's layer_residual; not for parallel-residual models)"),
    param: Param = [],
) -> None:
    """The logit lens: the answer's probability and rank, and the top tokens, as each layer's residual
    stream at the last position predicts them through the final norm and the unembedding.

    With --revisions, over training checkpoints (a layer × checkpoint map, drawn by `reason-interp plot`).
    """
    import nnsight_reasoning as nr

    h.run(nr.logit_lens, example_data(task, n_prompts, seed, param), kind="logit_lens", task=task,
          layers=layer or None, top_k=top_k, read=read)


@app.command()
@guard
def finetune(
    out: Path = typer.Option(..., "--out", help="directory for the revisions (step0, step<k> ..., main)"),
    task: Task = "kth_smallest",
    model: Model = None,
    revision: Revision = None,
    tune: str = typer.Option("all", help="parameters trained: all | attn | mlp | ln | lora (r=8, alpha=16, "
                                          "merged into each revision; needs peft); the repository's --tuning_param"),
    steps: int = typer.Option(1000, help="optimiser steps"),
    batch_size: int = typer.Option(128, help="examples per step"),
    lr: float = typer.Option(2e-5, help="AdamW learning rate"),
    weight_decay: float = typer.Option(1e-3, help="AdamW weight decay"),
    warmup: int = typer.Option(500, help="steps of linear warmup (then constant)"),
    save_every: Optional[int] = typer.Option(None, help="steps between saved revisions (default steps / 10)"),
    seed: Seed = 0,
    param: Param = [],
    restart: bool = typer.Option(False, "--restart", help="discard an interrupted or finished run in --out"),
    progress: bool = typer.Option(True, help="show a progress bar"),
) -> None:
    """Fine-tune a model on a task (as MechanisticProbe fine-tunes GPT-2 on k-th smallest); the revisions
    it writes are a model directory every command accepts (--model OUT --revisions all). A killed run
    resumes from its last saved revision when the same command runs again."""
    import inspect
    import time

    import nnsight_reasoning as nr

    from .common import out as console  # `out` is the option here

    # a --param must not name one of finetune's own keywords (they would arrive twice)
    own = {**{k: f"--{k.replace('_', '-')}" for k in inspect.signature(nr.finetune).parameters if k != "task_params"},
           "n_prompts": "--batch-size", "tokenizer": "--model"}
    t0 = time.perf_counter()
    path = nr.finetune(model, task, out=out, tune=tune, steps=steps, batch_size=batch_size, lr=lr,
                       weight_decay=weight_decay, warmup=warmup, save_every=save_every, revision=revision, seed=seed,
                       restart=restart, progress=progress,
                       **task_params(param, own=own))
    log = json.loads((path / "finetune.json").read_text())
    loss = log["loss"]
    console.print(f"wrote [bold]{path}[/] in {time.perf_counter() - t0:.1f} s: revisions "
                  f"{', '.join(log['revisions'])}; loss {loss[0]:.3f} at step 1, {loss[-1]:.3f} at step {len(loss)}",
                  highlight=False)


@app.command()
@guard
def tasks(name: Optional[str] = typer.Argument(None, help="show one task's parameters")) -> None:
    """List tasks, or document one task's parameters with their defaults."""
    from nnsight_reasoning.tasks import TASKS, get_task

    if name is None:
        table = Table(title="tasks")
        table.add_column("name")
        table.add_column("what")
        table.add_column("commands")
        for t in TASKS.values():
            # circuit takes any task with pairs; neurons and binding have their own prompt builders;
            # cot_solution's answers are whole solutions (several tokens): fine-tuning data only
            extra = {"cot_arithmetic": "neurons", "binding": "binding", "cot_solution": "finetune"}.get(t.name)
            table.add_row(t.name, t.summary, ", ".join(c for c, ok in (
                ("patch, circuit", t.pairs), ("evaluate", t.name != "cot_solution"), ("attention, probe", t.labelled),
                (extra, extra)) if ok))
        show_item(table)
        return
    t = get_task(name)
    table = Table(title=f"{t.name}: {t.summary}")
    for col in ("parameter", "default", "meaning"):
        table.add_column(col)
    for k, (default, meaning) in t.params.items():
        table.add_row(k, json.dumps(default), meaning)
    show_item(table)


@app.command()
@guard
def models(all_revisions: bool = typer.Option(False, "--all", help="a column for every revision (a wide table)")) -> None:
    """List the embedded model's revisions and their measured accuracy."""
    from nnsight_reasoning import embedded

    card = embedded.card()
    accs = card.get("accuracy", {})
    task_names = list(card.get("evals", {})) or sorted({t for r in accs.values() for t in r})
    every = embedded.revisions()
    revs = every if all_revisions else _fitting(every, (out.width - 32) // 10)
    shown = "" if len(revs) == len(every) else f" ({len(revs)} of {len(every)} revisions; --all for every one)"
    n_params = f"{card['parameters']:,}" if "parameters" in card else "?"
    table = Table(title=f"embedded model ({n_params} parameters): accuracy per revision{shown}; "
                        f"load with nr.load_model(revision=...) or --revision")
    table.add_column("task \\ revision", no_wrap=True)
    for rev in revs:
        table.add_column(rev, justify="right")
    for t in task_names:
        table.add_row(t, *[f"{accs.get(rev, {}).get(t, float('nan')):.2f}" for rev in revs])
    heads = card.get("head_scores", {})
    for score in ("previous_token", "duplicate_token", "induction"):
        if heads:  # the best head's score on repeated random tokens (chance: uniform attention)
            table.add_row(f"best {score} head", *[f"{heads.get(rev, {}).get(score, {}).get('max', float('nan')):.2f}"
                                                  for rev in revs], style="dim")
    show_item(table)
    if len(revs) < len(every):  # the table shows a sample: name them all, so any can be asked for
        out.print(f"revisions: {', '.join(every)}", highlight=False, soft_wrap=True)
    if heads.get("main"):
        out.print(f"head scores: mean attention on the pattern's key over repeated random tokens (induction at "
                  f"uniform attention: {heads['main']['chance']:.3f}). Mean P(answer) per task: MODEL_CARD.md",
                  highlight=False)
    out.print(f"files: {embedded.REVISIONS_DIR}", highlight=False)
    out.print("any other model: --model EleutherAI/pythia-160m --revision step3000, or a local directory",
              highlight=False)


def _fitting(revisions: list[str], n: int) -> list[str]:
    """At most ``n`` (at least 3) of ``revisions``, evenly spread, the first and last included."""
    n = max(3, n)
    if len(revisions) <= n:
        return revisions
    picks = sorted({round(i * (len(revisions) - 1) / (n - 1)) for i in range(n)})
    return [revisions[i] for i in picks]


@app.command()
@guard
def show(path: Path = typer.Argument(..., help="results file (.nc)")) -> None:
    """Summarise a results file: provenance, dimensions, top effects."""
    import nnsight_reasoning as nr
    from nnsight_reasoning.experiments import summarize

    ds = nr.load_result(path)
    table = Table(title=str(path), show_header=False)
    for k, v in ds.attrs.items():
        table.add_row(k, str(v))
    table.add_row("dims", ", ".join(f"{d}={n}" for d, n in ds.sizes.items()))
    table.add_row("variables", ", ".join(ds.data_vars))
    show_item(table)
    for item in summarize(ds):
        show_item(item)


@app.command("unit-overlap")
@guard
def unit_overlap(
    paths: List[Path] = typer.Argument(..., help="patching results (.nc) with a unit site (--site mlp_dim, as "
                                                  "lm-arithmetic's 'neurons'; or neuron, head)"),
    top_k: int = typer.Option(100, help="top units (largest mean effect) per group"),
    site: Optional[str] = typer.Option(None, help="the unit site to rank, when a result holds several (default, or "
                                                  "embed_dim+mlp_dim: both together, as lm-arithmetic ranks them)"),
    by_operator: bool = typer.Option(False, "--by-operator", help="one group per operator of an arithmetic result"),
    drop_mult_by_one: bool = typer.Option(False, "--drop-mult-by-one", help="arithmetic: leave out × pairs with an "
                                          "operand 1 (lm-arithmetic's mult_by_1_filter)"),
) -> None:
    """Share of top units two groups of prompts have in common (lm-arithmetic's neuron-overlap
    analyses): between results (arithmetic and number retrieval, …) or operators (--by-operator)."""
    import nnsight_reasoning as nr
    from nnsight_reasoning.experiments.patch import unit_label

    results = [nr.load_result(p) for p in paths]
    if drop_mult_by_one:
        results = [nr.drop_mult_by_one(ds) if ds.attrs.get("task") == "arithmetic" else ds for ds in results]
    ov = nr.unit_overlap(*results, top_k=top_k, site=site, by_operator=by_operator)
    groups = [str(g) for g in ov.group.values]
    table = Table(title=f"share of the top {top_k} {ov.attrs['site']} units in common "
                        f"({ov.attrs.get('metric')}, mean over each group's prompts)")
    table.add_column("group (prompts)")
    for k in range(len(groups)):  # columns by number: the rows name the groups
        table.add_column(str(k + 1), justify="right")
    for k, (g, n) in enumerate(zip(groups, ov.n.values)):
        table.add_row(f"{k + 1} {g} ({int(n)})", *(f"{float(ov.overlap.sel(group=g, other=h)):.2f}" for h in groups))
    show_item(table)
    top = Table(title="each group's top 3 units (layer, unit) and mean effect")
    for col in ("group", *(f"#{r + 1}" for r in range(min(3, top_k)))):
        top.add_column(col)
    for g in groups:
        sel = ov.sel(group=g)
        top.add_row(g, *(f"L{int(layer)} {unit_label({ov.attrs['unit']: int(u)})} {float(e):+.3g}" for layer, u, e in zip(
            sel.top_layer.values[:3], sel.top_unit.values[:3], sel.top_effect.values[:3])))
    show_item(top)


@app.command("export-graph")
@guard
def export_graph(
    path: Path = typer.Argument(..., help="a circuit result (.nc) computed with --qkv"),
    out_file: Path = typer.Argument(..., help="the graph file to write (.json)"),
    size: Optional[int] = typer.Option(None, help="the circuit of this many edges (default: the searched smallest "
                                                  "circuit, else the size the summary shows)"),
    checkpoint: Optional[str] = typer.Option(None, help="which checkpoint of a sweep (default the last)"),
) -> None:
    """Write a circuit as hannamw/EAP-IG's Graph.to_json lays it out (scores and in_graph of
    every edge), for EAP-IG and circuits-over-time's analyses."""
    import nnsight_reasoning as nr
    from nnsight_reasoning.errors import UsageError
    from nnsight_reasoning.experiments.circuit import to_eap_ig_json

    if out_file.suffix != ".json":
        raise UsageError(f"the graph file must end in .json (got {out_file})")
    if not out_file.parent.is_dir():
        raise UsageError(f"{out_file.parent} is not a directory; create it first")
    to_eap_ig_json(nr.load_result(path), out_file, size=size, checkpoint=checkpoint)
    out.print(f"wrote [bold]{out_file}[/]", highlight=False)


@app.command()
@guard
def plot(
    path: Path = typer.Argument(..., help="results file (.nc)"),
    out_file: Optional[Path] = typer.Option(None, "--out", help="PNG file; default: beside the results file"),
    kind: Optional[str] = typer.Option(None, help="patching: positions | roles | prediction; attention results: "
                                                  "heatmap | entropy | rank | mass | flow; circuit results: circuit | "
                                                  "faithfulness | overlap | stability"),
    prompt: int = typer.Option(0, help="attention heatmap: which prompt"),
) -> None:
    """Patching heatmap (layer × position per site), accuracy, attention (heatmap of one prompt,
    head entropy, mass per reasoning step), probe F1 per layer, head scores or a circuit (graph,
    faithfulness by size, overlap and stability across checkpoints), as PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import nnsight_reasoning as nr

    from matplotlib.backend_bases import FigureCanvasBase

    from nnsight_reasoning.errors import UsageError

    from nnsight_reasoning.results.io import writable

    ds = nr.load_result(path)
    target = out_file or path.with_suffix(f".{kind}.png" if kind else ".png")
    formats = FigureCanvasBase.get_supported_filetypes()
    if target.suffix[1:].lower() not in formats:  # matplotlib would add .png to a bare name, or refuse
        raise UsageError(f"--out {target}: give a figure file ending in .png (or {', '.join(f'.{f}' for f in sorted(formats) if f != 'png')})")
    writable(target, ending=".png")
    target.parent.mkdir(parents=True, exist_ok=True)
    import matplotlib.pyplot as plt

    plt.close(nr.plot_result(ds, target, kind=kind, prompt=prompt))  # written: pyplot need not keep it open
    out.print(f"wrote [bold]{target}[/]", highlight=False)


app.command()(reasoning.attention)
app.command()(reasoning.probe)
app.command()(reasoning.prune)
app.command()(reasoning.robustness)
app.command()(circuits.heads)
app.command("successor-heads")(circuits.successor_heads)
app.command()(circuits.circuit)
app.command("path-patching")(circuits.path_patching)
app.command("ioi-components")(circuits.ioi_components)
app.command("greater-than-components")(circuits.greater_than_components)
app.command("backup-heads")(circuits.backup_heads)
app.command("copy-suppression")(circuits.copy_suppression)
app.command("self-repair")(circuits.self_repair)
app.command()(mechanisms.neurons)
app.command()(mechanisms.binding)

remote_app = typer.Typer(cls=OneLineErrors, no_args_is_help=True, help="NDIF remote execution: where runs go, what is served.")
app.add_typer(remote_app, name="remote")


@remote_app.command("status")
@guard
def remote_status(
    host: Optional[str] = typer.Option(None, help="NDIF URL; default NDIF_HOST, else nnsight's config"),
) -> None:
    """Which NDIF host --remote uses, whether it answers, and which models it serves."""
    from nnsight_reasoning import remote

    st = remote.status(host or True)
    out.print(f"host      {st['host']}", highlight=False)
    out.print(f"api key   {st['api_key']}", highlight=False)
    if not st["reachable"]:
        fail(f"NDIF at {st['host']} does not answer ({st['error']}); check NDIF_HOST or run locally", 1)
    out.print(f"answers   yes ({st['latency_ms']} ms)", highlight=False)
    # Plain lines, not a table: repo ids are often long local paths that a user copies,
    # and a table would cut them to the terminal width.
    out.print(f"serves    {len(st['models'])} models (state, revision, repo)", highlight=False)
    for m in st["models"]:
        out.print(f"  {m['state']:<12} {m['revision']:<12} {m['repo_id']}", highlight=False, soft_wrap=True)


def main() -> None:
    from nnsight_reasoning.progress import hf_bars_off

    # transformers' per-tensor "Loading weights" bars would bury ours; the Hub's download bars
    # stay, so that a revision being downloaded (a Pythia sweep) is not a silent wait
    with hf_bars_off():
        app()


if __name__ == "__main__":
    sys.exit(main())
