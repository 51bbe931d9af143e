"""``reason-interp neurons`` and ``reason-interp binding`` (registered in ``main``): neurons of
chain-of-thought arithmetic (Rai & Yao 2024) and binding IDs (Feng & Steinhardt 2024)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from .common import Model, OutFile, Progress, Remote, Revision, Seed, guard, out, out_path


@guard
def neurons(
    model: Model = None,
    revision: Revision = None,
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
    batch_size: int = typer.Option(64, help="most prompts per forward pass (remote: per request)"),
    remote: Remote = False,
    out_file: OutFile = None,
    progress: Progress = True,
) -> None:
    """Neurons of chain-of-thought arithmetic (Rai & Yao 2024): discover answer neurons, describe
    them by the tokens they promote, and measure them and their ablation per prompt variant."""
    import nnsight_reasoning as nr

    path = out_path(out_file, "neurons", "cot_arithmetic", model or "embedded", revision or "main")
    t0 = time.time()
    m = nr.load_model(model, revision)
    ds = nr.neurons.cot_neurons(m, n_prompts=n_prompts, variants=variant or nr.tasks.COT_VARIANTS, data=data,
                                n_shots=n_shots, n_steps=n_steps, seed=seed, discover_on=discover_on, top_k=top_k,
                                min_frequency=min_frequency, batch_size=batch_size, remote=remote, progress=progress)
    nr.save_result(ds, path)
    out.print(f"wrote [bold]{path}[/] in {time.time() - t0:.1f} s ({ds.sizes['unit']} neurons discovered on "
              f"{discover_on})", highlight=False)
    table = Table(title="discovered neurons (most recurrent first)")
    for col in ("neuron", "frequency", "mean contribution", "promotes", *[str(v) for v in ds["variant"].values]):
        table.add_column(col)
    for u in range(min(12, ds.sizes["unit"])):
        v = ds.isel(unit=u)
        table.add_row(f"L{int(v['layer'])}N{int(v['neuron'])}", f"{float(v['frequency']):.2f}",
                      f"{float(v['mean_contribution']):+.2f}", " ".join(map(str, v["promoted"].values[:4])),
                      *[f"{x:.2f}" for x in v["activation"].values])
    out.print(table)
    acc = Table(title="accuracy per variant (rows: ablation of the discovered neurons; random = as many other neurons)")
    acc.add_column("ablation")
    for name in ds["variant"].values:
        acc.add_column(str(name), justify="right")
    for a in ds["ablation"].values:
        acc.add_row(str(a), *[f"{x:.3f}" for x in ds["accuracy"].sel(ablation=a).values])
    out.print(acc)



@guard
def binding(
    model: Model = None,
    revision: Revision = None,
    n_contexts: int = typer.Option(200, help="contexts (each queried once per entity)"),
    n_pairs: int = typer.Option(2, help="entity-attribute statements per context"),
    n_estimate: int = typer.Option(200, help="other contexts for the binding-ID difference vectors"),
    seed: Seed = 0,
    batch_size: int = typer.Option(64, help="most rows per forward pass (remote: per request)"),
    remote: Remote = False,
    out_file: OutFile = None,
    progress: Progress = True,
) -> None:
    """Binding IDs (Feng & Steinhardt 2024): factorizability, position independence and
    mean-intervention swaps against a random-vector baseline."""
    import nnsight_reasoning as nr

    path = out_path(out_file, "binding", f"{n_pairs}pairs", model or "embedded", revision or "main")
    t0 = time.time()
    ds = nr.binding(nr.load_model(model, revision), n_contexts=n_contexts, n_pairs=n_pairs, n_estimate=n_estimate,
                    seed=seed, batch_size=batch_size, remote=remote, progress=progress)
    nr.save_result(ds, path)
    out.print(f"wrote [bold]{path}[/] in {time.time() - t0:.1f} s", highlight=False)
    table = Table(title=f"binding with {n_pairs} pairs (chance {ds.attrs['chance']:.2f})")
    table.add_column("measure")
    table.add_column("accuracy", justify="right")
    rows = [("clean", ds["accuracy"]), ("positions of pairs 0 and 1 exchanged", ds["position_accuracy"])]
    rows += [(f"factorizability: {t} substituted", ds["factor_accuracy"].sel(target=t)) for t in ds["target"].values]
    rows += [(f"swap by {v} vector on {i} tokens", ds["swap_accuracy"].sel(intervention=i, vector=v))
             for i in ds["intervention"].values for v in ds["vector"].values]
    for name, value in rows:
        table.add_row(name, f"{float(value):.3f}")
    out.print(table)
