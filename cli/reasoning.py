"""``reason-interp attention``, ``probe`` and ``prune`` (registered in ``main``): attention analysis,
MechanisticProbe and head pruning on labelled reasoning prompts (k-th smallest, ProofWriter/ARC files)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, List, Optional

import typer

from nnsight_reasoning.results.io import model_at
from .common import Harness, OptionGroup, Param, Seed, experiment_command, given, int_ranges, task_params, typed


def _prompts(task: str, data: Optional[Path], n_prompts: Optional[int], seed: int, param: List[str],
             **explicit: Any) -> Any:
    """Labelled prompts of ``task`` (the registry's generator), made before any model loads so
    that a bad task, option or data file fails at once."""
    import nnsight_reasoning as nr
    from nnsight_reasoning.errors import UsageError

    info = nr.tasks.get_task(task)
    if info.labelled is None:
        raise UsageError(f"task {task!r} has no reasoning-tree labels; use one of: "
                         f"{', '.join(n for n, t in nr.tasks.TASKS.items() if t.labelled)}")
    params = task_params(param, **explicit)
    if data is not None:
        params["path"] = str(data)
    info.check_params({**params, "seed": seed})
    return info.labelled(n_prompts=n_prompts, seed=seed, **params)


# the labelled-prompt options of both commands; they receive the prompts as `prompts`
PROMPTS = OptionGroup("prompts", dict(
    task=(Annotated[str, typer.Option(help="kth_smallest, or proofwriter / arc with --data FILE")], "kth_smallest"),
    data=(Annotated[Optional[Path], typer.Option(help="proofwriter/arc: local .jsonl/.json/.csv file (columns: "
                                                      "`reason-interp tasks proofwriter`)")], None),
    n_prompts=(Annotated[Optional[int], typer.Option(help="number of prompts (files: at most the first N rows)")], 256),
    seed=(Seed, 0),
    length=(Annotated[Optional[int], typer.Option(help="kth_smallest: numbers per list (default 5)")], None),
    k=(Annotated[Optional[int], typer.Option(help="kth_smallest: which smallest to ask for (default 2; several, one "
                                                 "probe each: --param k=1-8)")], None),
    max_n=(Annotated[Optional[int], typer.Option(help="kth_smallest: numbers are 0..max_n (default 99)")], None),
    corrupt=(Annotated[Optional[str], typer.Option(help="corrupted variant: shuffle | drop | perturb (kth_smallest "
                                                        "only) | negate (files)")], None),
    n_corrupt=(Annotated[Optional[int], typer.Option(help="statements dropped, perturbed or negated (default 1)")],
               None),
    param=(Param, [])), lambda task, data, n_prompts, seed, param, **explicit: _prompts(task, data, n_prompts, seed,
                                                                                      param, **explicit))


@experiment_command(PROMPTS)
def attention(
    h: Harness,
    prompts: Any,
    layer: List[int] = typer.Option([], help="layer(s) to keep (repeatable); default all"),
    head: List[int] = typer.Option([], help="head(s) to keep (repeatable); default all"),
    patterns: str = typer.Option("last", help="attention rows stored: last (answer position) | all | none"),
    pruned: Optional[Path] = typer.Option(None, help="a `reason-interp prune` result (of this model and revision: "
                                                     "only its shape is checked; attrs pruned_from records it): its "
                                                     "heads pruned at --pruned-order and --pruned-fraction are zeroed "
                                                     "in every pass"),
    pruned_order: str = typer.Option("entropy_position", help="with --pruned: the result's ordering (e.g. "
                                                              "entropy_position, random0)"),
    pruned_fraction: float = typer.Option(0.4, help="with --pruned: the result's pruned fraction (the repository's "
                                                    "case study: 0.4)"),
) -> None:
    """Attention patterns, head entropy and attention mass per reasoning step (Hou et al. 2023); with --pruned,
    of the model with a head-pruning result's heads pruned (the repository's attention-flow case study:
    `plot --kind flow`)."""
    import nnsight_reasoning as nr

    stray = typed("pruned_order", "pruned_fraction")
    if stray and pruned is None:
        raise nr.UsageError(f"{', '.join(stray)} choose{'s' if len(stray) == 1 else ''} heads of a --pruned result: "
                            f"add --pruned PRUNE.nc")
    mask = None if pruned is None else _pruned_heads(pruned, pruned_order, pruned_fraction, h.model)
    h.run(nr.attention, lambda tokenizer: prompts, kind="attention", task=prompts.task, layers=layer or None,
          heads=head or None, patterns=patterns, **given(pruned=mask))


def _pruned_heads(path: Path, order: str, fraction: float, models: Optional[List[str]]) -> Any:
    """The (layer, head) mask of a head-pruning result at one ordering and fraction; a warning when
    it was pruned on another model than ``models`` (--model; None: the embedded model)."""
    import warnings

    import nnsight_reasoning as nr
    from nnsight_reasoning.errors import UsageError

    ds = nr.load_result(path)
    if ds.attrs.get("method") != "head_pruning":
        raise UsageError(f"--pruned {path}: not a head-pruning result (method {ds.attrs.get('method')!r}); make one "
                         f"with `reason-interp prune`")
    if "checkpoint" in ds.dims or "model" in ds.dims:
        raise UsageError(f"--pruned {path}: a result over several checkpoints or models; prune one revision of one "
                         f"model")
    if order not in ds["ordering"].values:
        raise UsageError(f"--pruned-order {order!r}: {path} has {', '.join(map(str, ds['ordering'].values))}")
    fractions = ds["fraction"].values
    near = fractions[abs(fractions - fraction) < 1e-9]
    if not len(near):
        raise UsageError(f"--pruned-fraction {fraction}: {path} has {', '.join(f'{f:g}' for f in fractions)}")
    mask = ds["pruned"].sel(ordering=order, fraction=near[0]).drop_vars(["kind", "draw", "fraction", "ordering"],
                                                                        errors="ignore")
    # only the shape is checked against the model (the mask may be another revision's, in a sweep or on purpose):
    # the result records which model's heads these are, and another model is worth a word
    source, source_path = str(ds.attrs.get("model")), str(ds.attrs.get("model_path") or "")

    def same(model: str) -> bool:
        local = Path(model).expanduser()
        if local.is_dir():  # a local directory (loaded before any Hub id): by where it is, ./m and /abs/m alike
            if not source_path:
                return False
            here, there = local.resolve(), Path(source_path).resolve()
            # a revision's subdirectory (load_model(dir, revision=r) reads dir/r): the model is dir, any revision
            root = there.parent if there.name == str(ds.attrs.get("revision")) else there
            return here in (there, root) or (root != there and here.parent == root)
        return model == source  # a Hub id (or "embedded"): by name, any revision

    if not any(same(m) for m in models or ["embedded"]):
        warnings.warn(f"--pruned {path}: its heads were pruned on {source}, not on {', '.join(models or ['embedded'])}",
                      stacklevel=2)
    mask.attrs["pruned_from"] = (f"{path.name}: {model_at(ds)}, {order} at "
                                 f"{near[0]:g}")
    return mask


# the probe's options, shared by `probe` and `robustness` (the same keywords as nr.probe)
KNN = OptionGroup("knn", dict(
    baseline=(Annotated[str, typer.Option(help="auto (an untrained model: step0 where it is an untrained checkpoint, "
                                               "else random, e.g. GPT-2 or a finetune directory) | step0 (the step0 "
                                               "revision) | random (seeded init) | none")], "auto"),
    n_neighbors=(Annotated[int, typer.Option(help="kNN neighbours")], 8),
    folds=(Annotated[int, typer.Option(help="cross-validation folds over prompts")], 2),
    pool=(Annotated[str, typer.Option(help="features per layer: mean over heads (paper) | heads (one per head)")],
          "mean"),
    distance=(Annotated[str, typer.Option(help="kNN distance: euclidean (paper's k-th smallest) | manhattan "
                                               "(paper's ProofWriter/ARC)")], "euclidean"),
    query=(Annotated[str, typer.Option(help="attention from: last (answer position) | question_max | question_mean "
                                            "(the question's tokens; paper's ProofWriter/ARC: max)")], "last"),
    statement_pool=(Annotated[str, typer.Option(help="over a statement's tokens: sum | mean (paper's ProofWriter/ARC)")],
                    "sum"),
    normalise=(Annotated[bool, typer.Option("--normalise/--no-normalise",
                                            help="divide each prompt's features by their max (paper's k-th "
                                                 "smallest)")], True),
    drop_layers=(Annotated[Optional[str], typer.Option(help="layers the all-layers probe leaves out, e.g. "
                                                            "17-18,20-27,29-31 (the repository's LLaMA-7B choice); "
                                                            "default none")], None)),
    lambda drop_layers, **options: {**options, **given(drop_layers=int_ranges(drop_layers or "", "--drop-layers")
                                                       or None)})


@experiment_command(PROMPTS, KNN)
def probe(
    h: Harness,
    prompts: Any,
    knn: Any,
    cumulative: bool = typer.Option(True, "--cumulative/--single-layer",
                                    help="the probe at layer l reads layers 0..l (paper) or layer l alone"),
    step_f1: str = typer.Option("classes", help="step probe's score: classes (macro F1 over the steps) or "
                                                "repository (the k-th smallest probe's two labels, useful and answer)"),
) -> None:
    """MechanisticProbe: kNN probes for useful statements and reasoning steps on attention, per layer."""
    import nnsight_reasoning as nr

    h.run(nr.probe, lambda tokenizer: prompts, kind="probe", task=prompts.task, cumulative=cumulative,
          step_f1=step_f1, seed=prompts.params.get("seed", 0), **knn)


@experiment_command(PROMPTS)
def prune(
    h: Harness,
    prompts: Any,
    fraction: List[float] = typer.Option([], help="fraction of all heads to prune (repeatable); default 0.1 .. 0.9"),
    ordering: List[str] = typer.Option([], help="entropy_position | entropy_rank | random (repeatable); default all"),
    n_random: int = typer.Option(3, help="random orders drawn (seeds --seed, --seed + 1, ...)"),
) -> None:
    """Head pruning (Hou et al. 2023): accuracy as 10 % .. 90 % of heads are pruned, lowest entropy first or at random."""
    import nnsight_reasoning as nr
    from nnsight_reasoning.experiments.pruning import DEFAULT_FRACTIONS, ORDERINGS

    h.run(nr.prune, lambda tokenizer: prompts, kind="pruning", task=prompts.task,
          fractions=fraction or DEFAULT_FRACTIONS, orderings=ordering or ORDERINGS, n_random=n_random,
          seed=prompts.params.get("seed", 0))


# robustness: the same options, but --corrupt names the corruption measured against the clean prompts
ROBUST_PROMPTS = OptionGroup("prompts", PROMPTS.options,
                             lambda task, data, n_prompts, seed, param, corrupt, n_corrupt, **explicit: (
                                 _prompts(task, data, n_prompts, seed, param, **explicit),
                                 corrupt, 1 if n_corrupt is None else n_corrupt))


@experiment_command(ROBUST_PROMPTS, KNN)
def robustness(
    h: Harness,
    prompts: Any,
    knn: Any,
    n_subsets: int = typer.Option(256, help="random subsets of prompts (the repository: 1024)"),
    subset_min: int = typer.Option(64, help="smallest subset"),
    subset_max: int = typer.Option(128, help="largest subset"),
    n_bins: int = typer.Option(8, help="equal-width bins of the probing score"),
    choices: Optional[str] = typer.Option(None, help="comma-separated answers, e.g. True,False: a prompt is right when "
                                                     "its answer has the highest logit among them (the repository's); "
                                                     "default: the top-1 token"),
    baseline_prompts: Optional[int] = typer.Option(None, help="measure the baseline's F1 once, on this many prompts, "
                                                              "for every subset (the repository: 128); default: on "
                                                              "each subset"),
) -> None:
    """Probe score against robustness (Hou et al. 2023): over random subsets, the probing score and the accuracy
    drop under --corrupt (default: negate for files, drop for kth_smallest), binned, with their correlation."""
    import nnsight_reasoning as nr

    clean, corrupt, n_corrupt = prompts
    h.run(nr.robustness, lambda tokenizer: clean, kind="robustness", task=clean.task, corrupt=corrupt,
          n_corrupt=n_corrupt, n_subsets=n_subsets, subset_size=(subset_min, subset_max), n_bins=n_bins,
          seed=clean.params.get("seed", 0), **given(choices=None if choices is None else
                                                    [c.strip() for c in choices.split(",") if c.strip()],
                                                    baseline_prompts=baseline_prompts), **knn)
