"""``reason-interp heads`` and ``reason-interp circuit`` (registered in ``main``): attention-head
scores and edge-attribution circuits (or exact edge patching), over checkpoints too."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from .common import Harness, OptionGroup, Param, Seed, Task, experiment_command, pair_data, task_params, typed

DEFAULT_SIZES = "10,20,50,100,200"


@experiment_command()
def heads(
    h: Harness,
    n_sequences: int = typer.Option(32, help="repeated random-token sequences"),
    seq_len: int = typer.Option(20, help="tokens per half of a sequence"),
    seed: Seed = 0,
) -> None:
    """Previous-token, duplicate-token, induction, successor and copy-suppression score of every
    attention head."""
    import nnsight_reasoning as nr

    def data(tok):
        return nr.tasks.repeated_tokens(n_sequences, seq_len, seed, tokenizer=tok)

    h.run(nr.head_scores, data, kind="heads", task="repeated_tokens")


@experiment_command()
def successor_heads(
    h: Harness,
    variants: bool = typer.Option(True, "--variants/--no-variants", help="also each list with its capitals inverted "
                                                                        "and/or a space before every word"),
) -> None:
    """Successor heads as Tigges et al. score them over training: each head's static OV circuit
    between consecutive words of ordinal lists (numbers, days, months, …); local models only."""
    import nnsight_reasoning as nr

    h.run(nr.successor_heads, lambda tok: nr.tasks.ordinal_sequences(variants), kind="successor_heads",
          task="ordinal_sequences")


@experiment_command()
def circuit(
    h: Harness,
    task: Task = "arithmetic",
    n_prompts: int = typer.Option(32, help="number of clean/corrupted prompt pairs"),
    seed: Seed = 0,
    param: Param = [],
    exact: bool = typer.Option(False, "--exact", help="exact edge patching (every edge cut alone; costly) instead of "
                                                      "EAP; writes edge_patching_*.nc"),
    ig_steps: Optional[int] = typer.Option(None, help="1 = EAP; m > 1 = EAP-IG with m integration steps "
                                                      "(default 30, as Tigges et al.)"),
    sizes: Optional[str] = typer.Option(None, help="circuit sizes (edges before pruning) whose faithfulness is "
                                                   f"measured; '' for scores only (default {DEFAULT_SIZES})"),
    selection: str = typer.Option("topn", help="how a circuit of n edges is chosen: topn (largest |score|) or greedy "
                                               "(from the logits up, EAP-IG's apply_greedy, as Tigges et al.)"),
    min_fraction: Optional[float] = typer.Option(None, help="also search the smallest circuit whose circuit / clean "
                                                            "logit difference reaches this (Tigges et al.: 0.8)"),
    search: str = typer.Option("25:1600:25", help="START:STOP:STEP grid of that search, in edges"),
    metric: Optional[str] = typer.Option(None, help="logit_diff or prob_diff (over answer sets for greater_than and "
                                                    "sentiment); default prob_diff for greater_than, else logit_diff"),
    ig_points: str = typer.Option("midpoint", help="EAP-IG's integration points: midpoint, eap_ig (k/m from the "
                                                   "corrupted input, hannamw/EAP-IG) or clean_corrupted"),
    ablation: str = typer.Option("patching", help="what a cut edge carries: patching (the corrupted prompt's "
                                                  "value), zero, mean or mean_positional (means over the clean "
                                                  "prompts; with --ig-steps 1)"),
    qkv: bool = typer.Option(False, "--qkv", help="EAP-IG's graph: separate edges into each head's query, key and "
                                                  "value inputs (a3.1<q>, …)"),
    thresholds: Optional[str] = typer.Option(None, help="comma-separated |score| thresholds: each one's circuit is "
                                                        "every edge at or above it, pruned (EAP-IG's apply_threshold)"),
    ig_variant: str = typer.Option("inputs", help="what EAP-IG interpolates: inputs (the token embeddings) or "
                                                  "activations (each node group's output in turn, EAP-IG's "
                                                  "get_scores_ig_activations)"),
) -> None:
    """Edge attribution (EAP / EAP-IG) over heads and MLPs, circuits of several sizes and their
    faithfulness by real patching (Tigges et al. 2024); --exact for exact edge patching; over
    checkpoints with --revisions."""
    import nnsight_reasoning as nr
    from nnsight_reasoning.errors import UsageError

    if exact and typed("ig_steps", "sizes", "min_fraction", "selection", "metric", "ig_points", "ig_variant",
                       "ablation"):
        raise UsageError("--exact patches every edge and makes no circuits; --ig-steps, --sizes, --selection, "
                         "--min-fraction, --metric, --ig-points, --ig-variant and --ablation are for EAP")
    try:
        grid = tuple(int(v) for v in search.split(":"))
        if len(grid) != 3:
            raise ValueError
    except ValueError:
        raise UsageError(f"--search must be START:STOP:STEP in edges, e.g. 25:1600:25 (got {search!r})") from None
    try:
        size_list = [int(s) for s in (DEFAULT_SIZES if sizes is None else sizes).split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--sizes must be comma-separated integers, e.g. 10,20,50 (got {sizes!r})") from None
    try:
        threshold_list = [float(t) for t in (thresholds or "").split(",") if t.strip()]
    except ValueError:
        raise UsageError(f"--thresholds must be comma-separated numbers, e.g. 0.1,0.5 (got {thresholds!r})") from None
    if exact and threshold_list:
        raise UsageError("--exact makes no circuits; --thresholds is for EAP")
    data = pair_data(task, n_prompts, seed, task_params(param))
    if exact:  # its own default file: it never overwrites an EAP result
        h.run(nr.edge_patching, data, kind="edge_patching", task=task, qkv=qkv)
    else:
        h.run(nr.circuit, data, kind="circuit", task=task, ig_steps=30 if ig_steps is None else ig_steps,
              sizes=size_list, selection=selection, min_fraction=min_fraction, search=grid, metric=metric,
              ig_points=ig_points, ablation=ablation, qkv=qkv, ig_variant=ig_variant, thresholds=threshold_list)


@experiment_command()
def path_patching(
    h: Harness,
    receivers: str = typer.Option(..., help="comma-separated receiver nodes, patched together: aL.H (layer L head H), "
                                            "mL (MLP L) or logits"),
    task: Task = "ioi",
    n_prompts: int = typer.Option(32, help="number of clean/corrupted prompt pairs"),
    seed: Seed = 0,
    param: Param = [],
    receiver_input: str = typer.Option("all", help="all (the whole input), or q, k, v: a head's query, key or value "
                                                   "input alone"),
    senders: Optional[str] = typer.Option(None, help="comma-separated sender nodes (input, aL.H, mL), each patched "
                                                     "alone; default every node feeding a receiver"),
    position: str = typer.Option("all", help="all, or last: the corrupted output reaches the receivers at the last "
                                             "position only (as circuits-over-time)"),
    metric: Optional[str] = typer.Option(None, help="logit_diff or prob_diff (default as circuit)"),
) -> None:
    """Path patching: each sender's corrupted output delivered to the receivers' input (q, k, v
    or whole) through the residual stream alone, e.g. S-inhibition heads with --task ioi
    --param corruption=swap --receivers <name movers> --receiver-input q --position last."""
    import nnsight_reasoning as nr

    data = pair_data(task, n_prompts, seed, task_params(param))
    h.run(nr.path_patching, data, kind="path_patching", task=task, receivers=receivers, receiver_input=receiver_input,
          senders=senders, position=position, metric=metric)


def _circuit_file(circuit: Optional[Path], h: Harness, task: str) -> Any:
    """The circuit a `reason-interp circuit` result file holds (``selected_circuit``: its searched
    smallest circuit, else the search's stop size, else the size its summary shows), as an
    (upstream, downstream) 0/1 DataArray. A sweep's file gives a run over --revisions each
    checkpoint's own (a checkpoint dim, which the harness reads per revision); a run with
    --revision R that checkpoint's (refused if the file lacks it); a run with neither its main
    checkpoint, else its last. None without a file."""
    import nnsight_reasoning as nr
    from nnsight_reasoning.errors import UsageError
    from nnsight_reasoning.experiments.circuit import selected_circuit

    if circuit is None:
        return None
    if not circuit.is_file():
        raise UsageError(f"--circuit {circuit}: no such file; run reason-interp circuit --task {task} first")
    ds = nr.load_result(circuit)
    if ds.attrs.get("method") not in ("eap", "eap_ig"):
        raise UsageError(f"--circuit {circuit} is not a circuit result (method {ds.attrs.get('method')!r})")
    if ds.attrs.get("task") != task:
        raise UsageError(f"--circuit {circuit} is a circuit of the {ds.attrs.get('task')!r} task; this command needs "
                         f"one found on {task}: reason-interp circuit --task {task}")
    try:
        edges = selected_circuit(ds)
    except UsageError as e:
        raise UsageError(f"--circuit {circuit}: {e}") from None
    if "checkpoint" not in edges.dims or h.revisions:
        return edges.load()
    names = [str(c) for c in edges["checkpoint"].values]
    if h.revision and h.revision not in names:
        raise UsageError(f"--circuit {circuit} has no checkpoint {h.revision!r} (it has {', '.join(names)})")
    want = h.revision or "main"
    return edges.isel(checkpoint=names.index(want) if want in names else -1).drop_vars("checkpoint").load()


CircuitFile = Annotated[Optional[Path], typer.Option(
    help="a `reason-interp circuit` result of the same task: its searched smallest circuit (where the search found "
         "none, its stop size; without a search, the smallest measured size keeping a faithfulness of 0.8); from a "
         "sweep's file, with --revisions each checkpoint's own, with --revision that checkpoint's, with neither "
         "main's or else the last checkpoint's")]


@experiment_command()
def ioi_components(
    h: Harness,
    n_prompts: int = typer.Option(70, help="IOI prompt pairs (the repository: 70, mixed orders)"),
    seed: Seed = 0,
    param: Param = [],
    copy_threshold: float = typer.Option(10.0, help="a name mover's copy score must exceed this, in percent"),
    top_k: int = typer.Option(5, help="a name counts as copied among the head's top-k OV tokens"),
    circuit: CircuitFile = None,
) -> None:
    """Name movers (copy score, attention to IO) and S-inhibition heads (path patching into the
    name movers' queries, IO and S1 swapped) as circuits-over-time's component evaluation; local
    models only."""
    import nnsight_reasoning as nr

    params = {"corruption": "swap", **task_params(param)}
    edges = _circuit_file(circuit, h, "ioi")
    data = pair_data("ioi", n_prompts, seed, params)
    h.run(nr.ioi_components, data, kind="ioi_components", task="ioi", copy_threshold=copy_threshold, top_k=top_k,
          circuit=edges)


@experiment_command()
def greater_than_components(
    h: Harness,
    n_prompts: int = typer.Option(1000, help="greater-than prompts (the repository: 1,000)"),
    seed: Seed = 0,
    param: Param = [],
    circuit: CircuitFile = None,
) -> None:
    """Greater-than components as circuits-over-time's verify_greater_than: heads that attend to
    the start year YY and copy it, MLPs that favour the later years; with --circuit the
    circuit's MLPs into the logits and the heads feeding them; local models only."""
    import nnsight_reasoning as nr

    edges = _circuit_file(circuit, h, "greater_than")
    data = pair_data("greater_than", n_prompts, seed, task_params(param))
    h.run(nr.greater_than_components, data, kind="greater_than_components", task="greater_than", circuit=edges)


@experiment_command()
def backup_heads(
    h: Harness,
    n_prompts: int = typer.Option(70, help="IOI prompts (the repository: 70, mixed orders)"),
    seed: Seed = 0,
    param: Param = [],
    heads: Optional[str] = typer.Option(None, help="comma-separated heads aL.H to ablate; default the name movers "
                                                   "found by the copy score"),
    copy_threshold: float = typer.Option(75.0, help="a name mover's copy score is at least this, in percent"),
    top_k: int = typer.Option(5, help="a name counts as copied among the head's top-k OV tokens"),
    circuit: CircuitFile = None,
) -> None:
    """Backup name movers as circuits-over-time's backup analysis: every head's direct effect on
    the logit difference before and after the name movers are zero-ablated; local models
    only."""
    import nnsight_reasoning as nr

    edges = _circuit_file(circuit, h, "ioi")
    data = pair_data("ioi", n_prompts, seed, task_params(param))
    h.run(nr.backup_heads, data, kind="backup_heads", task="ioi", heads=heads, copy_threshold=copy_threshold,
          top_k=top_k, circuit=edges)


def text_options(n_sequences: int, seq_len: int, n_help: str, len_help: str, hub: str) -> OptionGroup:
    """The running-text options of copy-suppression and self-repair (their defaults and the data
    each repository read differ): the command receives ``texts``, tokenizer -> ``TextSequences``,
    after a missing file and sizes out of range are refused, before any model loads."""

    def build(data: Optional[str], column: str, n_sequences: int, seq_len: int, seed: int) -> Callable[[Any], Any]:
        import nnsight_reasoning as nr
        from nnsight_reasoning.errors import UsageError

        if data is not None and Path(data).suffix.lower() in (".jsonl", ".json", ".csv", ".tsv") and \
                not Path(data).is_file():
            raise UsageError(f"--data {data}: no such file")
        for name, v, lo in (("--n-sequences", n_sequences, 1), ("--seq-len", seq_len, 4)):
            if v < lo:
                raise UsageError(f"{name} must be >= {lo} (got {v})")
        return lambda tok: nr.tasks.text_sequences(n_sequences, seq_len, seed, tokenizer=tok, source=data,
                                                   column=column)

    return OptionGroup("texts", dict(
        data=(Annotated[Optional[str], typer.Option(help=f"texts: a .jsonl/.json/.csv/.tsv file or a Hugging Face "
                                                         f"dataset id ({hub}; needs the Hub); default: the toolkit's "
                                                         f"task prompts as documents")], None),
        column=(Annotated[str, typer.Option(help="the column holding the texts")], "text"),
        n_sequences=(Annotated[int, typer.Option(help=n_help)], n_sequences),
        seq_len=(Annotated[int, typer.Option(help=len_help)], seq_len),
        seed=(Seed, 0)), build)


@experiment_command(text_options(100, 61, "sequences read (the means are over --n-mean of them)",
                                 "tokens per sequence, bos included (the repository scores 61)",
                                 "stas/openwebtext-10k, the repository's"))
def copy_suppression(
    h: Harness,
    texts: Any,
    heads: Optional[str] = typer.Option(None, help="comma-separated heads aL.H; default every head from "
                                                   "--start-layer on"),
    start_layer: int = typer.Option(0, help="first layer scored when --heads is not given"),
    n_mean: int = typer.Option(100, help="sequences the per-position mean output of a head is taken over"),
    n_eval: int = typer.Option(17, help="sequences CSPA is scored on"),
    k_unembeddings: float = typer.Option(0.05, help="fraction of the positions up to a destination whose tokens "
                                                    "count as suppressed"),
) -> None:
    """Copy suppression by CSPA (McDougall et al.; Tigges et al.'s get_model_cspa.py): the share
    of each head's direct effect that survives keeping only its suppression of attended
    tokens, 1 − KL(CSPA) / KL(mean ablation); local models only."""
    import nnsight_reasoning as nr

    h.run(nr.copy_suppression, texts, kind="copy_suppression", task="text", heads=heads,
          start_layer=start_layer, n_mean=n_mean, n_eval=n_eval, k_unembeddings=k_unembeddings)


@experiment_command(text_options(120, 128, "texts read", "tokens per text, bos included (the repository: 128)",
                                 "e.g. NeelNanda/pile-10k; the repository reads the Pile"))
def self_repair(
    h: Harness,
    texts: Any,
    heads: Optional[str] = typer.Option(None, help="comma-separated heads aL.H; default every head"),
    ablation: str = typer.Option("resample", help="resample (the head's output on another text; the repository's "
                                                  "figures) | zero | mean (its mean over every text and "
                                                  "position)"),
    threshold: float = typer.Option(0.0, help="count tokens where the head's |direct effect| exceeds this (logits)"),
) -> None:
    """Self-repair (Tigges et al.'s backup_research, after Rushing & Nanda): each head's direct effect on the next
    token against the change of that token's logit when the head alone is ablated, on running text."""
    import nnsight_reasoning as nr

    h.run(nr.self_repair, texts, kind="self_repair", task="text", heads=heads, ablation=ablation,
          threshold=threshold)
