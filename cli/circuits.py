"""``reason-interp heads`` (registered in ``main``): attention-head scores, over checkpoints too."""
from __future__ import annotations

import time

import typer
from rich.table import Table

from .common import Model, OutFile, Progress, Remote, Revision, Revisions, Seed, guard, out, out_path, \
    revision_label, sweep_revisions


@guard
def heads(
    model: Model = None,
    revision: Revision = None,
    revisions: Revisions = None,
    n_sequences: int = typer.Option(32, help="repeated random-token sequences"),
    seq_len: int = typer.Option(20, help="tokens per half of a sequence"),
    seed: Seed = 0,
    batch_size: int = typer.Option(32, help="most sequences per forward pass (remote: per request)"),
    remote: Remote = False,
    out_file: OutFile = None,
    progress: Progress = True,
) -> None:
    """Previous-token, duplicate-token and induction score of every attention head."""
    import nnsight_reasoning as nr
    from nnsight_reasoning.heads import SCORES

    names = sweep_revisions(model, revision, revisions)
    path = out_path(out_file, "heads", "repeated_tokens", model or "embedded", revision_label(revision, names))
    t0 = time.time()
    m = model if names else nr.load_model(model, revision)
    ds = nr.head_scores(m, n_sequences=n_sequences, seq_len=seq_len, seed=seed, batch_size=batch_size,
                        remote=remote, progress=progress, revisions=names)
    nr.save_result(ds, path)
    out.print(f"wrote [bold]{path}[/] in {time.time() - t0:.1f} s ({n_sequences} sequences)", highlight=False)
    last = ds.isel(checkpoint=-1) if "checkpoint" in ds.dims else ds
    rev = str(ds["checkpoint"].values[-1]) if "checkpoint" in ds.dims else ds.attrs["revision"]
    table = Table(title=f"top heads per score ({ds.attrs['model']}@{rev}, mean over sequences)")
    for col in ("score", "uniform attention", "1st", "2nd", "3rd"):
        table.add_column(col)
    for score in SCORES:
        flat = last[score].mean("prompt").stack(lh=("layer", "head"))
        top = flat.argsort().values[::-1][:3]
        table.add_row(score, f"{float(last['uniform'].sel(score=score)):.2f}",
                      *[f"L{flat['lh'].values[i][0]}H{flat['lh'].values[i][1]} {float(flat.values[i]):.2f}" for i in top])
    out.print(table)
