"""``reason-interp neurons`` and ``reason-interp binding`` (registered in ``main``): neurons of
chain-of-thought arithmetic (Rai & Yao 2024) and binding IDs (Feng & Steinhardt 2024). Each
parses its own options and hands them to :meth:`.common.Harness.run`; the tables printed are
the experiments' own ``summarize``."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import Harness, Seed, experiment_command, given, typed


@experiment_command()
def neurons(
    h: Harness,
    n_prompts: int = typer.Option(200, help="problems per variant"),
    variant: List[str] = typer.Option([], help="prompt variant(s) to compare (repeatable); default all four, or "
                                               "with --generate cot, equation_only and text_only"),
    data: Optional[Path] = typer.Option(None, help="GSM8K-style JSON Lines (question/answer); default: synthetic "
                                                   "word problems"),
    n_shots: int = typer.Option(1, help="solved exemplars before each problem (without --generate)"),
    n_steps: int = typer.Option(2, help="synthetic problems: steps per problem"),
    seed: Seed = 0,
    discover_on: Optional[str] = typer.Option(None, help="the variant whose prompts the neurons are discovered on "
                                                         "(default full; with --generate the first --variant)"),
    top_k: int = typer.Option(20, help="neurons kept per prompt by contribution to its answer (with --generate: per "
                                       "layer and generated token, by the ranking)"),
    min_frequency: Optional[float] = typer.Option(None, help="a neuron is discovered if in the top k of this "
                                                             "fraction of prompts (default 0.25); with --generate "
                                                             "and --select frequency: of read steps (default 0.1)"),
    unit: List[str] = typer.Option([], help="measure this neuron, e.g. L3N488, instead of discovering them "
                                            "(repeatable); a sweep without it tracks those of the last revision"),
    generate: bool = typer.Option(False, "--generate", help="Rai & Yao's pipeline: the model writes its own chain "
                                                            "of thought from exemplar files (--variant: prompt types, "
                                                            "or any FILE.txt of exemplars, named by its stem)"),
    style: str = typer.Option("embedded", help="--generate: prompt style, embedded or repository"),
    prompts_dir: Optional[Path] = typer.Option(None, help="--generate: exemplar files in the repository's layout "
                                                          "(data/prompts/*.txt); default the style's shipped files"),
    max_new_tokens: int = typer.Option(48, help="--generate: tokens generated per prompt"),
    ranking: str = typer.Option("algorithm_one",
                                help="--generate: algorithm_one (|a|·‖w‖) or direct_contribution"),
    select: str = typer.Option("concepts", help="--generate: units are the concept neurons (concepts) or the "
                                                "frequently ranked ones (frequency)"),
    ablation: List[str] = typer.Option([], help="--generate: noise, zero, mean, random, random_zero "
                                                "(repeatable; default all)"),
    noise_scale: float = typer.Option(1.0, help="--generate: multiplier of the N(-1, 1) noise (1: the repository's)"),
    trigger: Optional[str] = typer.Option(None, help="--generate, --variant zero_shot: the text after \"A:\" (default "
                                                     "the style's; the repository's accuracy script: \"Let's think "
                                                     "step by step\")"),
) -> None:
    """Neurons of chain-of-thought arithmetic (Rai & Yao 2024): discover answer neurons, describe
    them by the tokens they promote, and measure them and their ablation per prompt variant.
    With --generate, the paper's pipeline: the model generates its chain of thought per prompt
    type; algorithm one ranks neurons at every generated token; concept neurons are measured and
    ablated during generation."""
    import nnsight_reasoning as nr
    from nnsight_reasoning.experiments.neurons import parse_units

    units = parse_units(unit) if unit else None
    # options of the other mode are refused, not ignored (a typo in one would otherwise pass unseen)
    if generate:
        stray, where, fix = typed("n_shots"), "without", "drop"
    else:
        stray, where, fix = (typed("style", "prompts_dir", "max_new_tokens", "ranking", "select", "ablation",
                                   "noise_scale", "trigger"), "with", "add --generate or drop")
    if stray:
        one = len(stray) == 1
        raise nr.UsageError(f"{', '.join(stray)} only appl{'ies' if one else 'y'} {where} --generate: "
                            f"{fix} {'it' if one else 'them'}")
    if generate:
        from nnsight_reasoning.tasks.cot_generation import prompt_type

        asked = list(variant or ["cot", "equation_only", "text_only"])
        named = [v for v in asked if discover_on and prompt_type(v) == discover_on]  # --discover-on by a file's stem
        types = list(dict.fromkeys([*(named or ([discover_on] if discover_on else [])), *asked]))
        h.run(nr.cot_generation,
              lambda tok: nr.tasks.cot_generation(n_prompts, types, style=style, prompts_dir=prompts_dir, data=data,
                                                  n_steps=n_steps, trigger=trigger, seed=seed),
              kind="neurons", task="cot_generation", discover_on=prompt_type(types[0]), max_new_tokens=max_new_tokens,
              ranking=ranking, top_k=top_k, select=select, units=units, noise_scale=noise_scale, seed=seed,
              **given(min_frequency=min_frequency, ablations=tuple(ablation) or None))
        return
    discover_on = discover_on or "full"
    variants = [discover_on, *(variant or nr.tasks.COT_VARIANTS)]  # the discovery variant first

    def prompts(tok):
        return nr.tasks.cot_variants(n_prompts, variants, n_shots=n_shots, n_steps=n_steps, seed=seed, data=data,
                                     tokenizer=tok)

    h.run(nr.neurons, prompts, kind="neurons", task="cot_arithmetic", discover_on=discover_on, top_k=top_k,
          units=units, **given(min_frequency=min_frequency))


@experiment_command()
def binding(
    h: Harness,
    n_contexts: int = typer.Option(200, help="contexts (each queried once per entity)"),
    n_pairs: int = typer.Option(2, help="entity-attribute statements per context"),
    n_estimate: int = typer.Option(200, help="other contexts for the binding-ID difference vectors"),
    family: str = typer.Option("cities", help="statement family: cities | capitals | fruits | occupations | boxes | "
                                              "shapes | parallel, onehop (these two need a vocabulary with cities, "
                                              "respectively; person, living, color)"),
    seed: Seed = 0,
    measure: str = typer.Option("accuracy", help="accuracy (the summary of every measure) | factorization "
                                                 "(binding-iclr Fig. 3) | position (Fig. 4) | means (Table 1) | cyclic "
                                                 "(Fig. 6 right; --n-pairs 3) | pairwise (Table 1 without --cyclic: "
                                                 "two of 3 IDs switched; --n-pairs 3) | subspace (Fig. 5) | cross_subspace "
                                                 "(Table 2; --n-pairs 3 --estimate-family F) | mcq (the multiple-"
                                                 "choice exchange; SST-2 reviews from --data)"),
    split: Optional[bool] = typer.Option(None, "--split/--no-split",
                                         help="estimate the binding-ID vectors on one half of the words and test on "
                                              "the other (default: with --measure means, cyclic, pairwise and subspace, "
                                              "not with another --estimate-family, as binding-iclr)"),
    freeze_context: bool = typer.Option(True, "--freeze-context/--no-freeze-context",
                                        help="every measure but accuracy: the context keeps its clean values at "
                                             "every layer (binding-iclr)"),
    max_offset: int = typer.Option(10, help="position: offsets from -max_offset to max_offset + distance - 1"),
    window: str = typer.Option("full", help="position: full (offsets as --max-offset says) | local (binding-iclr's "
                                            "local test: -2..2 and distance-2..distance+2)"),
    estimate_family: Optional[str] = typer.Option(None, help="means, cyclic, pairwise: estimate the binding-ID vectors on "
                                                             "another family (binding-iclr's cross-task means); "
                                                             "cross_subspace: the source task (default: --family)"),
    entity_tokens: int = typer.Option(2, help="every measure but accuracy: tokens edited from each entity's first "
                                              "token (binding-iclr's --entity_width: the name and the token after it)"),
    attribute_tokens: int = typer.Option(1, help="every measure but accuracy: tokens edited from each attribute's "
                                                 "first token (binding-iclr's --country_width)"),
    data: Optional[str] = typer.Option(None, help="mcq: SST-2 reviews, a .tsv/.csv/.jsonl file with sentence and "
                                                  "label columns, or a Hub dataset id (default stanfordnlp/sst2, "
                                                  "which needs the Hub)"),
    max_width: int = typer.Option(5, help="mcq: exchange the last 1..max_width tokens of each option's line"),
    hops: Optional[int] = typer.Option(None, help="--family onehop: hop sentences per question (binding-iclr's "
                                                   "num_qn_context; default its count for the measure: factorization "
                                                   "2n, position n, means n + 1, cyclic n, others 2n)"),
    cross_attributes: bool = typer.Option(False, "--cross-attributes",
                                          help="subspace: the attributes' coordinates on the opposite sides "
                                               "(binding-iclr's --cross_countries)"),
) -> None:
    """Binding IDs (Feng & Steinhardt 2024): factorizability, position independence and
    mean-intervention swaps against a random-vector baseline; --measure factorization and
    --measure position run binding-iclr's Fig. 3 and Fig. 4 tests (--window local: its local position test)."""
    import nnsight_reasoning as nr
    from nnsight_reasoning.experiments.binding import WINDOWS

    # checked whatever the measure, so that a typo is never silently ignored
    for flag, value, least in (("--max-offset", max_offset, 0), ("--entity-tokens", entity_tokens, 1),
                               ("--attribute-tokens", attribute_tokens, 1), ("--max-width", max_width, 1)):
        if value < least:
            raise nr.UsageError(f"{flag} must be >= {least} (got {value})")
    if window not in WINDOWS:
        raise nr.UsageError(f"--window must be one of {', '.join(WINDOWS)} (got {window!r})")
    if cross_attributes and measure != "subspace":
        raise nr.UsageError("--cross-attributes applies to --measure subspace only")
    if hops is not None and ("onehop" not in (family, estimate_family) or measure == "mcq"):
        raise nr.UsageError("--hops applies to --family onehop (its question's hop sentences)")
    if measure == "mcq":  # its own data: letters bound to options, SST-2 reviews
        source = data or nr.tasks.mcq.HUB_ID
        h.run(nr.binding, lambda tok: nr.tasks.mcq_contexts(n_contexts, seed, source), kind="binding_mcq",
              task="mcq", measure="mcq", max_width=max_width, freeze_context=freeze_context)
        return
    if data is not None:
        raise nr.UsageError("--data is for --measure mcq (the other measures make their contexts)")
    name = f"{n_pairs}pairs" if family == "cities" else f"{family}_{n_pairs}pairs"
    if estimate_family and estimate_family != family:  # cross-task runs get their own default file
        name += f"_from_{estimate_family}" if measure == "cross_subspace" else f"_means_from_{estimate_family}"
    extra = {} if measure == "accuracy" else {"measure": measure, "freeze_context": freeze_context,
                                              "entity_tokens": entity_tokens, "attribute_tokens": attribute_tokens}
    if cross_attributes:
        extra["cross_attributes"] = True
        name += "_cross"  # its own default file beside the uncrossed grid
    if measure == "position":
        extra.update(max_offset=max_offset, window=window)
        if window == "local":  # its own default file beside the full sweep's
            name += "_local"
    # the repository splits the words for its own task's means, cyclic and subspace tests, not for
    # the cross-task ones (rx:547, 550, 684, 687)
    cross = bool(estimate_family) and estimate_family != family
    split = (measure in ("means", "cyclic", "pairwise", "subspace") and not cross) if split is None else split
    # Δ_1 and Δ_2 come from 3 pairs; the cross-task source's D_1 … D_3 from 4
    estimate_pairs = {"subspace": 3, "cross_subspace": 4}.get(measure)
    if hops is None and "onehop" in (family, estimate_family):  # rx:21, 91, 134, 200, 617 (2 pairs; cyclic 3)
        hops = {"position": n_pairs, "means": n_pairs + 1, "cyclic": n_pairs}.get(measure)
    if measure == "cross_subspace" and not estimate_family:
        name += f"_from_{family}"
    h.run(nr.binding, lambda tok: nr.tasks.binding_contexts(n_contexts, n_pairs, n_estimate, seed, family, split,
                                                            estimate_family, estimate_pairs, hops),
          kind="binding" if measure == "accuracy" else f"binding_{measure}", task=name, **extra)
