"""Binding IDs (Feng & Steinhardt 2024, "How do language models bind entities in context?").

Contexts state n entity–attribute pairs ("Alice lives in Paris . Bob lives in Rome .") and
ask for one entity's attribute. The answer is read among the candidate attributes (those of
the context, plus the donor's in attribute substitution): ``correct`` = the expected one
has the highest logit. All edits act on the residual stream at one token position at every
depth (embeddings and every layer output), replacing it by a clean value (plus a vector).

- **Factorizability**: in context c, the activations of entity k (or attribute k) are
  replaced by those of entity k (attribute k) of another context c' at the same position.
  Entity: the query names c''s entity, which c never mentions; binding by ID predicts c's
  attribute k. Attribute: the query names c's entity k; binding by ID predicts c''s
  attribute k, which c never mentions.
- **Position independence**: the position ids of statements 0 and 1 are exchanged (tokens
  stay in place, so only the positions the model sees change); accuracy against the clean run.
- **Mean interventions**: binding-ID difference vectors Δ_E = mean(h[E1] − h[E0]) and
  Δ_A = mean(h[A1] − h[A0]) per depth over the data's estimation contexts (an independent
  draw). Adding Δ to the first pair and subtracting it from the second (entity or attribute
  tokens) should swap the bindings: the query for entity 0 then answers attribute 1 and vice
  versa (``swap``). Baseline: random vectors with the same norm at each depth.

Data: ``nr.tasks.binding_contexts(n_contexts, n_pairs, n_estimate, seed, family)``: the
family's statements (``cities`` by default; ``capitals``, ``fruits``, ``occupations`` and
``boxes`` in the question-and-answer frame); candidates are the context's answers (for
``capitals``, the capitals of the stated countries).

The package: this module runs a measure (:func:`binding`) and summarises its result;
``swaps`` holds accuracy, factorizability and position independence, ``means`` the mean
interventions, cyclic and pairwise swaps and the subspace tests, ``mcq`` the multiple-choice
measure, and ``_common`` what they share (locating words, queries, passes, edits, Δ vectors).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import xarray as xr

from ...errors import UsageError, checked_int
from ...results.io import model_at
from ...runner import Run, experiment
from ...tasks.binding import EXPERIMENT_FAMILIES, BindingContexts
from ...tasks.mcq import McqContexts
from ._common import MEASURES, SUBSPACE_ROOTS, TOKENS, WINDOWS, _with_tokens, locate  # noqa: F401 (locate: re-exported)
from .mcq import _mcq
from .means import _cross_subspace, _cyclic, _means, _subspace
from .swaps import _accuracy, _factorization, _position


@experiment("binding_ids", batch_size=64)
def binding(run: Run, contexts: BindingContexts | McqContexts, *, measure: str = "accuracy",
            freeze_context: bool = True, max_offset: int = 10, window: str = "full",
            roots: Sequence[Sequence[float]] = SUBSPACE_ROOTS, grid: int = 10, cross_attributes: bool = False,
            entity_tokens: int = TOKENS[0], attribute_tokens: int = TOKENS[1], max_width: int = 5) -> xr.Dataset:
    """Binding IDs; ``measure`` picks the experiment (see the module doc):

    - "accuracy": factorizability, position independence and mean interventions as accuracies
      (this toolkit's summary; edits propagate through the context);
    - "factorization": binding-iclr's Fig. 3, the 2×2 substitution by side
      (:func:`_factorization`);
    - "position": binding-iclr's Fig. 4, the position sweep (:func:`_position`);
    - "means": binding-iclr's Table 1, mean interventions with its Δ estimator and calibrated
      accuracy (:func:`_means`; make the data with ``split=True`` for its train/test words);
    - "cyclic": binding-iclr's Fig. 6 (right), cyclic swaps of 3 binding IDs (:func:`_cyclic`;
      3 pairs);
    - "pairwise": binding-iclr's Table 1 without ``--cyclic``, two of 3 binding IDs switched, each
      pair of sides in turn (:func:`_cyclic` with ``measure="pairwise"``; 3 pairs);
    - "subspace": binding-iclr's Fig. 5, side 1's binding ID moved over a grid in the plane of
      Δ_1 and Δ_2 (:func:`_subspace`; 2 pairs, estimate contexts of 3: ``estimate_pairs=3``).
      ``roots``: side 0's coordinates, one panel each; ``grid``: points per axis on [−0.5, 1.5];
      ``cross_attributes``: the attributes' coordinates on the opposite sides (binding-iclr's
      ``--cross_countries``);
    - "cross_subspace": binding-iclr's Table 2, 3-pair contexts bound by another task's
      binding-ID differences (:func:`_cross_subspace`; ``estimate_family=``, ``estimate_pairs=4``);
    - "mcq": binding-iclr's multiple-choice test, letters bound to options, the last 0 …
      ``max_width`` tokens of each option's line exchanged with a context whose letters are
      swapped (:func:`_mcq`; data ``nr.tasks.mcq_contexts(...)``, SST-2 reviews).

    ``freeze_context`` (every measure but "accuracy"): the context tokens keep their clean values at
    every layer, as binding-iclr's interventions do, so only the question reads an edit.
    ``max_offset``: the position sweep runs from −max_offset to max_offset + Δ − 1 (Δ the
    distance between the two pairs), within the positions that exist. ``window="local"``:
    binding-iclr's local position test instead (``run_local_position_independence``: offsets
    −2 … 2 around the stated positions and Δ − 2 … Δ + 2 around the exchanged ones, per target).
    ``entity_tokens``, ``attribute_tokens`` (every binding-iclr measure): how many tokens from
    each entity's (attribute's) first token an edit covers — binding-iclr's ``entity_width=2``
    and ``country_width=1``, so by default an entity's window is its name and the token after
    it; substitution, position shifts and binding-ID vectors (one Δ per token of the window)
    act on the whole window.

    Returns a Dataset whose variables are named by the measure (each measure's function above
    documents its dims; docs/experiments/binding.md shows a schema): log-probabilities of the
    answers over the full vocabulary in nats (``factor_logprob``, ``position_logprob``,
    ``means_logprob``, ``cyclic_logprob``, ``cross_logprob``, ``subspace_logprob``,
    ``mcq_logprob``), what the binding-ID account predicts and whether it won (``*_correct``,
    ``*_expected``, ``*_intended``, ``mcq_swapped``), accuracies in [0, 1] (``*_accuracy``), and
    the binding-ID vectors used (``delta``, per depth and d_model; ``delta_norm``). "accuracy"
    gives per context (``prompt``) and queried entity (``query``) ``correct``,
    ``factor_correct``, ``position_correct`` and ``swap``, with their accuracies.
    """
    if measure not in MEASURES:
        raise UsageError(f"unknown measure {measure!r}; choose from: {', '.join(MEASURES)}")
    tokens = (checked_int("entity_tokens", entity_tokens, 1), checked_int("attribute_tokens", attribute_tokens, 1))
    if cross_attributes and measure != "subspace":
        raise UsageError("cross_attributes applies to measure='subspace' only")
    if measure == "mcq" or isinstance(contexts, McqContexts):
        if measure != "mcq" or not isinstance(contexts, McqContexts):
            raise UsageError("the mcq measure takes nr.tasks.mcq_contexts(n_contexts, seed, data), and only it does")
        return _mcq(run, contexts, checked_int("max_width", max_width, 1), freeze_context)
    if measure == "accuracy":  # this toolkit's summary edits one token per word
        if contexts.contexts[0].family not in EXPERIMENT_FAMILIES:
            raise UsageError(f"the summary measure exchanges statements that start with their entity, one pair each "
                             f"({', '.join(EXPERIMENT_FAMILIES)}); {contexts.contexts[0].family!r} takes the "
                             f"binding-iclr measures (measure='factorization', 'position', 'means', …)")
        return _accuracy(run, contexts)
    return _with_tokens(_measure(run, contexts, measure, freeze_context, max_offset, window, roots, grid, tokens,
                                 bool(cross_attributes)), tokens)


def _measure(run: Run, contexts: BindingContexts, measure: str, freeze_context: bool, max_offset: int, window: str,
             roots: Sequence[Sequence[float]], grid: int, tokens: tuple[int, int],
             cross_attributes: bool = False) -> xr.Dataset:
    """binding-iclr's measures (the dispatch of :func:`binding`)."""
    if measure == "factorization":
        return _factorization(run, contexts, freeze_context, tokens)
    if measure == "position":
        max_offset = checked_int("max_offset", max_offset, 0)
        if window not in WINDOWS:
            raise UsageError(f"window must be one of {', '.join(WINDOWS)} (got {window!r})")
        return _position(run, contexts, freeze_context, max_offset, window, tokens)
    if measure == "means":
        return _means(run, contexts, freeze_context, tokens)
    if measure in ("cyclic", "pairwise"):
        return _cyclic(run, contexts, freeze_context, tokens, measure)
    if measure == "cross_subspace":
        return _cross_subspace(run, contexts, freeze_context, tokens)
    if measure == "subspace":
        try:
            root_list = [(float(a), float(b)) for a, b in roots]
        except (TypeError, ValueError):
            raise UsageError(f"roots is a list of (x, y) pairs (got {roots!r})") from None
        if not root_list:
            raise UsageError("subspace needs at least one root (x, y) (got none)")
        return _subspace(run, contexts, freeze_context, root_list, checked_int("grid", grid, 2), tokens,
                         cross_attributes)
    raise AssertionError(measure)  # every measure is dispatched above


def _per_cycle_table(ds: xr.Dataset, title: str, row_dim: str, row_label: str, correct: str, accuracy: str) -> Any:
    """A table of balanced accuracy per ``row_dim`` entry and permutation (3-cycle or switch), and
    their mean."""
    from rich.table import Table

    table = Table(title=title)
    perms = ds["cycle"] if "cycle" in ds.dims else ds["switch"]
    for col in (row_label, *[str(c) for c in perms.values], "mean"):
        table.add_column(col, justify="left" if col == row_label else "right")
    per = ds[correct].mean(("query", "prompt"))
    for r in ds[row_dim].values:
        table.add_row(str(r), *[f"{float(x):.3f}" for x in per.sel({row_dim: r}).values],
                      f"{float(ds[accuracy].sel({row_dim: r})):.3f}")
    return table


def summarize(ds: xr.Dataset) -> list[Any]:
    """Each binding measure's accuracy against chance; over checkpoints, one column each. For
    the factorization test, the outcome accuracy per side and substitution; for the position
    sweep, the mean log-probabilities at the original and the exchanged positions."""
    from rich.table import Table

    from ...results.io import last_checkpoint

    measure = ds.attrs.get("measure", "accuracy")
    if measure == "mcq":
        ds = last_checkpoint(ds)
        table = Table(title="share of queries answered with the other option's letter after the last w tokens of "
                            "each option's line come from the letter-swapped context")
        for col in ("w", "exchanged letter wins", "balanced", "mean log p(own letter)", "mean log p(other letter)"):
            table.add_column(col, justify="right")
        own = np.stack([ds["mcq_logprob"].values[:, q, q] for q in (0, 1)], 1).mean(axis=(1, 2))
        other = np.stack([ds["mcq_logprob"].values[:, q, 1 - q] for q in (0, 1)], 1).mean(axis=(1, 2))
        for w in ds["width"].values:
            balanced = ds["mcq_balanced_swap_accuracy"].sel(width=w) if "mcq_balanced_swap_accuracy" in ds else np.nan
            table.add_row(str(int(w)), f"{float(ds['mcq_swap_accuracy'].sel(width=w)):.3f}", f"{float(balanced):.3f}",
                          f"{own[w]:.2f}", f"{other[w]:.2f}")
        return [f"{ds.attrs.get('task')} · {model_at(ds)} · {ds.sizes['prompt']} contexts "
                f"· MCQ exchange (binding-iclr); clean accuracy {float(ds['control_accuracy']):.3f}", table]
    if measure == "subspace":
        ds = last_checkpoint(ds)
        table = Table(title="calibrated accuracy over the grid of side 1's binding ID (x·Δ_1 + y·o − Δ_1), per root")
        for col in ("root (side 0)", "mean", "min", "at Δ_2's coordinates"):
            table.add_column(col, justify="right")
        cx, cy = (float(v) for v in ds["delta2_coords"].values)
        for r in ds["root"].values:
            grid = ds["subspace_accuracy"].sel(root=r)
            near = grid.sel(x=cx, y=cy, method="nearest")
            table.add_row(f"({float(ds['root_x'][r]):.1f}, {float(ds['root_y'][r]):.1f})", f"{float(grid.mean()):.3f}",
                          f"{float(grid.min()):.3f}", f"{float(near):.3f}")
        crossed = " (attributes' coordinates on the opposite sides, --cross_countries)" \
            if ds.attrs.get("cross_attributes") else ""
        return [f"{ds.attrs.get('task')} · {model_at(ds)} · {ds.sizes['prompt']} contexts "
                f"· binding subspace (binding-iclr Fig. 5){crossed}; Δ_2 = {cx:.2f}·Δ_1 + {cy:.2f}·o", table]
    if measure == "cross_subspace":
        ds = last_checkpoint(ds)
        table = _per_cycle_table(ds, "balanced accuracy of the binding the source's IDs predict (E_i → A_π⁻¹(i))",
                                 "source", "source of D_1…D_3", "cross_correct", "cross_accuracy")
        return [f"{ds.attrs.get('task')} · {model_at(ds)} · {ds.sizes['prompt']} contexts "
                f"of 3 pairs · cross-task subspace (binding-iclr Table 2); control (clean run, stated binding) "
                f"{float(ds['control_accuracy']):.3f}", table]
    if measure in ("cyclic", "pairwise"):
        ds = last_checkpoint(ds)
        what = ("cyclic swap", "cyclic swaps of binding IDs (binding-iclr Fig. 6 right)") if measure == "cyclic" else \
            ("switch", "two of three binding IDs switched (binding-iclr Table 1 without --cyclic)")
        table = _per_cycle_table(ds, f"balanced accuracy of the binding the {what[0]} predicts (control: the stated "
                                     "one)", "target", "target", f"{measure}_correct", f"{measure}_accuracy")
        return [f"{ds.attrs.get('task')} · {model_at(ds)} · {ds.sizes['prompt']} contexts "
                f"of 3 pairs · {what[1]}", table]
    if measure == "means":
        ds = last_checkpoint(ds)
        head = (f"{ds.attrs.get('task')} · {model_at(ds)} · {ds.sizes['prompt']} "
                f"contexts · mean interventions (binding-iclr Table 1{', train/test words' if ds.attrs.get('split') else ''}"
                f"{', context frozen' if ds.attrs.get('freeze_context') else ''})")
        table = Table(title="accuracy of the original binding after +Δ at side 0, −Δ at side 1 (binding IDs: "
                            "≈ 0 for one swap, ≈ 1 for both)")
        table.add_column("intervention")
        for v in ds["vector"].values:
            table.add_column(f"{v} vector", justify="right")
        acc = ds["means_accuracy"].sel(query=["E0", "E1"]).mean("query")
        for i in ds["intervention"].values:
            table.add_row(str(i), *[f"{float(acc.sel(intervention=i, vector=v)):.3f}" for v in ds["vector"].values])
        return [head, table]
    if measure in ("factorization", "position"):
        ds = last_checkpoint(ds)
        head = (f"{ds.attrs.get('task')} · {model_at(ds)} · {ds.sizes['prompt']} "
                f"contexts · {measure} (binding-iclr{', context frozen' if ds.attrs.get('freeze_context') else ''})")
        if measure == "factorization":
            table = Table(title="accuracy of the answer binding IDs predict, per substitution (columns: side)")
            table.add_column("substituted")
            for s in ds["side"].values:
                table.add_column(f"side {int(s)}", justify="right")
            for e, a, name in ((0, 0, "none"), (0, 1, "attribute"), (1, 0, "entity"), (1, 1, "both")):
                table.add_row(name, *[f"{float(x):.3f}" for x in
                                      ds["outcome_accuracy"].sel(swap_entity=e, swap_attribute=a).values])
            return [head, table]
        table = Table(title="mean log-probability (query → answer) at the original and exchanged positions")
        table.add_column("target")
        table.add_column("offset")
        for q in ds["query"].values:
            for a in ds["answer"].values:
                table.add_column(f"{q} → {a}", justify="right")
        for t in ds["target"].values:
            for o in (0, int(ds["distance"].sel(target=t))):
                if o not in ds["offset"].values:
                    continue
                v = ds["position_mean"].sel(target=t, offset=o)
                table.add_row(str(t), str(o), *[f"{float(v.sel(query=q, answer=a)):.2f}" for q in ds["query"].values
                                                for a in ds["answer"].values])
        return [head, table]

    sweep = "checkpoint" in ds.dims
    n_pairs = ds.sizes["query"]
    head = (f"{ds.attrs.get('task')} · {model_at(ds)} · {ds.sizes['prompt']} contexts "
            f"of {n_pairs} pairs, each queried once per pair")
    table = Table(title=f"binding with {n_pairs} pairs (chance {float(ds.attrs.get('chance', 1 / n_pairs)):.2f})")
    table.add_column("measure")
    columns = [str(c) for c in ds["checkpoint"].values] if sweep else ["accuracy"]
    for c in columns:
        table.add_column(c, justify="right")
    rows = [("clean", ds["accuracy"]), ("positions of pairs 0 and 1 exchanged", ds["position_accuracy"])]
    rows += [(f"factorizability: {t} substituted", ds["factor_accuracy"].sel(target=t)) for t in ds["target"].values]
    rows += [(f"swap by {v} vector on {i} tokens", ds["swap_accuracy"].sel(intervention=i, vector=v))
             for i in ds["intervention"].values for v in ds["vector"].values]
    for name, value in rows:
        table.add_row(name, *[f"{x:.3f}" for x in np.atleast_1d(value.values).astype(float)])
    return [head, table]
