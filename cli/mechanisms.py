"""``reason-interp neurons`` and ``reason-interp binding`` (registered in ``main``): neurons of
chain-of-thought arithmetic (Rai & Yao 2024) and binding IDs (Feng & Steinhardt 2024). Each
parses its own options and hands them to :meth:`.common.Harness.run`; the tables printed are
the experiments' own ``summarize``."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import Harness, Seed, experiment_command


@experiment_command()
def neurons(
    h: Harness,
    n_prompts: int = typer.Option(200, help="problems per variant"),
    variant: List[str] = typer.Option([], help="prompt variant(s) to compare (repeatable); default all four"),
    data: Optional[Path] = typer.Option(None, help="GSM8K-style JSON Lines (question/answer); default: synthetic "
                                                   "word problems"),
    n_shots: int = typer.Option(1, help="solved exemplars before each problem"),
    n_steps: int = typer.Option(2, help="synthetic problems: steps per problem"),
    seed: Seed = 0,
    discover_on: str = typer.Option("full", help="the variant whose prompts the neurons are discovered on"),
    top_k: int = typer.Option(20, help="neurons kept per prompt, by contribution to its answer"),
    min_frequency: float = typer.Option(0.25, help="a neuron is discovered if in the top k of this fraction of "
                                                   "prompts"),
    unit: List[str] = typer.Option([], help="measure this neuron, e.g. L3N488, instead of discovering them "
                                            "(repeatable); a sweep without it tracks those of the last revision"),
) -> None:
    """Neurons of chain-of-thought arithmetic (Rai & Yao 2024): discover answer neurons, describe
    them by the tokens they promote, and measure them and their ablation per prompt variant."""
    import nnsight_reasoning as nr
    from nnsight_reasoning.experiments.neurons import parse_units

    units = parse_units(unit) if unit else None
    variants = [discover_on, *(variant or nr.tasks.COT_VARIANTS)]  # the discovery variant first

    def prompts(tok):
        return nr.tasks.cot_variants(n_prompts, variants, n_shots=n_shots, n_steps=n_steps, seed=seed, data=data,
                                     tokenizer=tok)

    h.run(nr.neurons, prompts, kind="neurons", task="cot_arithmetic", discover_on=discover_on, top_k=top_k,
          min_frequency=min_frequency, units=units)


@experiment_command()
def binding(
    h: Harness,
    n_contexts: int = typer.Option(200, help="contexts (each queried once per entity)"),
    n_pairs: int = typer.Option(2, help="entity-attribute statements per context"),
    n_estimate: int = typer.Option(200, help="other contexts for the binding-ID difference vectors"),
    family: str = typer.Option("cities", help="statement family: cities | capitals | fruits | occupations"),
    seed: Seed = 0,
) -> None:
    """Binding IDs (Feng & Steinhardt 2024): factorizability, position independence and
    mean-intervention swaps against a random-vector baseline."""
    import nnsight_reasoning as nr

    name = f"{n_pairs}pairs" if family == "cities" else f"{family}_{n_pairs}pairs"
    h.run(nr.binding, lambda tok: nr.tasks.binding_contexts(n_contexts, n_pairs, n_estimate, seed, family),
          kind="binding", task=name)
