"""Mean interventions, cyclic and pairwise swaps, and the subspace tests: the measures that add
binding-ID difference vectors (binding-iclr's Table 1, Fig. 5, Fig. 6 and Table 2)."""
from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from ... import backend
from ...errors import UsageError
from ...runner import Run
from ...tasks.binding import BindingContexts
from ._common import (
    CYCLES, INTERVENTIONS, MEAN_INTERVENTIONS, SWITCHES, VECTORS, _calibrated_right, _edited_runs, _locate,
    _null_queries, _repository_deltas, _span,
)


def _means(run: Run, contexts: BindingContexts, freeze: bool, tokens: tuple[int, int]) -> xr.Dataset:
    """binding-iclr's mean interventions (Table 1; ``test_mean_interventions``,
    ``coref/data_collection.py:502-575``): +Δ at side 0 and −Δ at side 1 on the attribute
    windows, the entity windows or both (each token its own Δ), at every depth; queries E0, E1 and a name not in the
    context (the null query); log-probabilities (full vocabulary) of A0 and A1. Accuracy as the
    repository's ``reduce_distractor_acc``: from each answer's log-probability the median
    (over contexts) of the null query's is subtracted; the query is right when the original
    binding (E0 → A0, E1 → A1) wins. Binding IDs predict ≈ 0 for one swap and ≈ 1 for both
    (two swaps restore it). Baseline: random vectors of Δ's norm at each depth (seeded)."""
    model = run.model
    if contexts.n_pairs != 2:
        raise UsageError(f"the mean interventions are defined for 2 pairs (got {contexts.n_pairs})")
    located, _, cand = _null_queries(model, contexts, tokens)
    delta = _repository_deltas(run, contexts.estimate, tokens)[:, 0]  # (2, token, D, d): Δ_1
    gen = torch.Generator().manual_seed(contexts.seed)
    rand = torch.randn(delta.shape, generator=gen, dtype=torch.float64).float()
    # Δ's norm per token and depth (0 outside a window, where rand is 0 too)
    rand = rand / rand.norm(dim=-1, keepdim=True) * delta.norm(dim=-1, keepdim=True)
    plan = [(i, v) for i in (1, 2, 3) for v in (0, 1)]  # (intervention, vector), none = the clean rows

    def edits(entry, loc):  # +Δ at side 0, −Δ at side 1 of the entity (kind 0) and/or attribute (kind 1) windows
        iv, v = entry
        vec = (delta, rand)[v]
        kinds = [k for k, on in ((0, iv in (2, 3)), (1, iv in (1, 3))) if on]
        return [(pos, sign * vec[kind, t]) for kind in kinds for side, sign in ((0, 1.0), (1, -1.0))
                for t, pos in enumerate(_span(loc, kind, side, tokens))]

    runs = _edited_runs(run, located, cand, 3, plan, edits, freeze, "mean interventions")
    logp = np.zeros((4, 2, 3, 2, len(contexts)))
    logp[0] = runs[0][None]  # none: the clean rows (both vector columns)
    for e, (iv, v) in enumerate(plan):
        logp[iv, v] = runs[1 + e]
    right = np.full((4, 2, 3, len(contexts)), np.nan)  # (intervention, vector, query, prompt); null: NaN
    right[:, :, :2] = _calibrated_right(logp)
    return xr.Dataset(
        {"means_logprob": (("intervention", "vector", "query", "answer", "prompt"), logp,
                           {"long_name": "log-probability of each answer (full vocabulary)", "units": "nats"}),
         "means_correct": (("intervention", "vector", "query", "prompt"), right,
                           {"long_name": "the original binding wins after null-query calibration (NaN: null)"}),
         "means_accuracy": (("intervention", "vector", "query"), right.mean(-1),
                            {"long_name": "binding-iclr's distractor-calibrated accuracy (original binding)"}),
         "delta": (("kind", "token", "depth", "d_model"), delta.numpy(),
                   {"long_name": "binding-ID difference: side 1 minus side 0 of the same word, per token of the "
                                 "window (NaN: not edited)"}),
         "random_vector": (("kind", "token", "depth", "d_model"), rand.numpy()),
         "delta_norm": (("kind", "token", "depth"), delta.norm(dim=-1).numpy())},
        coords={"intervention": np.array(MEAN_INTERVENTIONS, dtype=object),
                "vector": np.array(VECTORS, dtype=object), "query": np.array(["E0", "E1", "null"], dtype=object),
                "answer": np.array(["A0", "A1"], dtype=object), "kind": np.array(INTERVENTIONS, dtype=object),
                "token": np.arange(delta.shape[1]), "depth": np.arange(delta.shape[2]), "prompt": np.arange(len(contexts)),
                "text": ("prompt", [c.text(0) for c in contexts.contexts])},
        attrs={"method": "binding_ids", "measure": "means", "metric": "accuracy", "freeze_context": int(freeze),
               "split": int(bool(contexts.params.get("split")))})


def _cyclic(run: Run, contexts: BindingContexts, freeze: bool, tokens: tuple[int, int],
            measure: str = "cyclic") -> xr.Dataset:
    """binding-iclr's cyclic swaps of three binding IDs (Fig. 6 right; ``rx:598-670``,
    ``coref/data_collection.py:789-861``): with Δ_0 = 0 and Δ_1, Δ_2 estimated as for the mean
    interventions, a permutation π moves the binding ID of the entities (or of the attributes)
    at side i to that of side π(i), adding Δ_π(i) − Δ_i there (per token of the window) at every depth with the context
    frozen. Binding IDs predict that E_i then answers A_π(i) (entities moved), or A_π⁻¹(i)
    (attributes moved). Accuracy as the repository's ``reduce_balanced_acc``: each answer's
    log-probability minus its median over the queries and contexts of that run, then the
    argmax among the three answers; averaged over the two 3-cycles and the queries. The
    control is the clean run scored the same way against the stated binding.

    ``measure="pairwise"``: the same with the three switches of two sides, (0, 1), (0, 2) and
    (1, 2), instead of the 3-cycles (``run_category_means_interventions``,
    ``test_category_mean_interventions``, ``coref/data_collection.py:720-786``: the sides i and j
    get Δ_j − Δ_i and Δ_i − Δ_j, the third none; the notebook's ``build_intended_answers`` with
    ``is_cyclic=False``). A switch is its own inverse, so E_i answers A_π(i) either way.
    Variables ``pairwise_*`` over a ``switch`` dim."""
    model = run.model
    if contexts.n_pairs != 3 or len(contexts.estimate[0].entities) != 3:
        raise UsageError(f"the {measure} swaps are defined for 3 pairs in the contexts and the estimate contexts (got "
                         f"{contexts.n_pairs} and {len(contexts.estimate[0].entities)}); use n_pairs=3")
    perms, dim = (CYCLES, "cycle") if measure == "cyclic" else (SWITCHES, "switch")
    delta = _repository_deltas(run, contexts.estimate, tokens)  # (kind, 2, token, D, d): Δ_1, Δ_2
    ids_ = torch.cat([torch.zeros_like(delta[:, :1]), delta], 1)  # (kind, 3, token, D, d): Δ_0 = 0
    located = _locate(model, [(c, c.text(q)) for c in contexts.contexts for q in range(3)], tokens)
    cand = [backend.answer_tokens(model, list(c.answers), "attribute") for c in contexts.contexts]
    plan = [(p, kind) for p in range(len(perms)) for kind in (0, 1)]  # kind 0: entities, 1: attributes

    def edits(entry, loc):  # side i takes side π(i)'s binding ID (a side π leaves in place gets nothing)
        p, kind = entry
        return [(pos, ids_[kind, perms[p][side], t] - ids_[kind, side, t]) for side in range(3)
                if perms[p][side] != side for t, pos in enumerate(_span(loc, kind, side, tokens))]

    runs = _edited_runs(run, located, cand, 3, plan, edits, freeze, f"{measure} swaps")
    logp = np.zeros((len(perms), 3, 3, 3, len(contexts)))  # (perm, target: control/entity/attribute, query, answer)
    logp[:, 0] = runs[0][None]
    for e, (p, kind) in enumerate(plan):
        logp[p, 1 + kind] = runs[1 + e]
    intended = np.zeros((len(perms), 3, 3), np.int64)  # (perm, target, query)
    for p, perm in enumerate(perms):
        inverse = [perm.index(q) for q in range(3)]
        intended[p, 0], intended[p, 1], intended[p, 2] = range(3), perm, inverse
    balanced = logp - np.median(logp, axis=(2, 4), keepdims=True)  # per answer, over queries and contexts
    right = balanced.argmax(axis=3) == intended[..., None]  # (perm, target, query, prompt)
    over = "both 3-cycles" if measure == "cyclic" else "the three switches"
    labels = ["→".join(map(str, c)) for c in perms] if measure == "cyclic" else \
        ["↔".join(str(i) for i in range(3) if perm[i] != i) for perm in perms]
    return xr.Dataset(
        {f"{measure}_logprob": ((dim, "target", "query", "answer", "prompt"), logp,
                                {"long_name": "log-probability of each answer (full vocabulary)", "units": "nats"}),
         f"{measure}_intended": ((dim, "target", "query"), intended,
                                 {"long_name": "the answer binding IDs predict (index into answer)"}),
         f"{measure}_correct": ((dim, "target", "query", "prompt"), right.astype(np.int8)),
         f"{measure}_accuracy": ("target", right.mean(axis=(0, 2, 3)),
                                 {"long_name": f"binding-iclr's balanced accuracy, over {over} and the queries"}),
         "delta": (("kind", "k", "token", "depth", "d_model"), delta.numpy(),
                   {"long_name": "binding-ID differences Δ_k = ID_k − ID_0, k = 1, 2, per token of the window"})},
        coords={dim: np.array(labels, dtype=object),
                "target": np.array(["control", "entity", "attribute"], dtype=object),
                "query": np.array(["E0", "E1", "E2"], dtype=object), "answer": np.array(["A0", "A1", "A2"], dtype=object),
                "kind": np.array(INTERVENTIONS, dtype=object), "k": [1, 2], "token": np.arange(delta.shape[2]),
                "depth": np.arange(delta.shape[3]),
                "prompt": np.arange(len(contexts)), "text": ("prompt", [c.text(0) for c in contexts.contexts])},
        attrs={"method": "binding_ids", "measure": measure, "metric": "accuracy", "freeze_context": int(freeze),
               "split": int(bool(contexts.params.get("split")))})


def _cross_subspace(run: Run, contexts: BindingContexts, freeze: bool, tokens: tuple[int, int]) -> xr.Dataset:
    """binding-iclr's cross-task subspace test (Table 2; ``rx:738-811``
    ``run_cross_mean_interventions_cyclic_subspace``, ``coref/data_collection.py``
    ``test_cross_mean_interventions_cyclic_subspace``): can binding IDs made from *another
    task's* difference vectors bind the measured task's pairs?

    The measured family's own IDs, ID_i − ID_0 = B_i (B_0 = 0; B_1, B_2 from
    ``contexts.base_estimate``, 3 pairs), are taken out of every entity and attribute, and the
    source's differences D_1, D_2, D_3 (``contexts.estimate``: 4 pairs of ``estimate_family``)
    are put in: at side i the entity gets D_{i+1} − B_i and the attribute D_{π(i)+1} − B_i, for
    each 3-cycle π, at every depth with the context frozen. No side keeps its old ID, so the
    model can answer by the new IDs only: E_i answers A_π⁻¹(i) if the source's vectors span
    binding IDs for this task. Baselines as the repository's: ``zeros`` (every D = 0, so all
    six tokens get ID_0) and ``random`` (D_{i+1} a random vector of B_i's norm per depth,
    seeded). Accuracy: ``reduce_balanced_acc`` as for the cyclic swaps; ``control`` is the
    clean run against the stated binding."""
    model = run.model
    est = contexts.estimate
    if contexts.n_pairs != 3 or len(est[0].entities) != 4 or not contexts.base_estimate:
        raise UsageError(f"the cross-task subspace test measures 3 pairs with difference vectors of 4-pair "
                         f"estimate contexts (got {contexts.n_pairs} and {len(est[0].entities)}); CLI: --n-pairs 3; Python: "
                         f"binding_contexts(n, 3, m, seed, family, estimate_family=F, estimate_pairs=4)")
    base = _repository_deltas(run, contexts.base_estimate, tokens)  # (kind, 2, token, D, d): B_1, B_2
    base = torch.cat([torch.zeros_like(base[:, :1]), base], 1)  # (kind, 3, token, D, d), B_0 = 0
    source = _repository_deltas(run, est, tokens)  # (kind, 3, token, D, d): D_1, D_2, D_3 (per-token, unspread)
    gen = torch.Generator().manual_seed(contexts.seed)
    rand = torch.randn(base.shape, generator=gen, dtype=torch.float64).float()
    rand = rand / rand.norm(dim=-1, keepdim=True) * base.norm(dim=-1, keepdim=True)  # 0 where B_0 = 0
    family = est[0].family
    vectors = {family: source, "zeros": torch.zeros_like(base), "random": rand}
    names = list(vectors)
    located = _locate(model, [(c, c.text(q)) for c in contexts.contexts for q in range(3)], tokens)
    cand = [backend.answer_tokens(model, list(c.answers), "attribute") for c in contexts.contexts]
    plan = [(s, p) for s in range(len(names)) for p in range(len(CYCLES))]

    def edits(entry, loc):  # side i: entity D_{i+1} − B_i, attribute D_{π(i)+1} − B_i (per token)
        s, p = entry
        vec = vectors[names[s]]
        return ([(pos, vec[0, i, t] - base[0, i, t]) for i in range(3) for t, pos in enumerate(_span(loc, 0, i, tokens))]
                + [(pos, vec[1, CYCLES[p][i], t] - base[1, i, t]) for i in range(3)
                   for t, pos in enumerate(_span(loc, 1, i, tokens))])

    runs = _edited_runs(run, located, cand, 3, plan, edits, freeze, "cross-task subspace")
    logp = np.zeros((len(names), len(CYCLES), 3, 3, len(contexts)))  # (source, cycle, query, answer, prompt)
    for e, (s, p) in enumerate(plan):
        logp[s, p] = runs[1 + e]
    intended = np.array([[cyc.index(q) for q in range(3)] for cyc in CYCLES])  # (cycle, query): A_π⁻¹(i)
    balanced = logp - np.median(logp, axis=(2, 4), keepdims=True)
    right = balanced.argmax(axis=3) == intended[None, :, :, None]  # (source, cycle, query, prompt)
    clean = runs[0] - np.median(runs[0], axis=(0, 2), keepdims=True)  # (query, answer, prompt)
    control = clean.argmax(axis=1) == np.arange(3)[:, None]
    return xr.Dataset(
        {"cross_logprob": (("source", "cycle", "query", "answer", "prompt"), logp,
                           {"long_name": "log-probability of each answer (full vocabulary)", "units": "nats"}),
         "cross_correct": (("source", "cycle", "query", "prompt"), right.astype(np.int8)),
         "cross_accuracy": ("source", right.mean(axis=(1, 2, 3)),
                            {"long_name": "binding-iclr's balanced accuracy of A_π⁻¹(i), over both 3-cycles"}),
         # Table 2's second row: reduce_mean_correct_logit (paper_plots cell 36), unbalanced
         "cross_intended_logprob": ("source", np.take_along_axis(logp, intended[None, :, :, None, None], 3)
                                    .mean(axis=(1, 2, 3, 4)),
                                    {"long_name": "mean log-probability of the intended answer A_π⁻¹(i)",
                                     "units": "nats"}),
         "control_accuracy": ((), float(control.mean()),
                              {"long_name": "balanced accuracy of the stated binding, clean run"}),
         "delta": (("kind", "k", "token", "depth", "d_model"), base[:, 1:].numpy(),
                   {"long_name": "the measured family's binding-ID differences B_k, k = 1, 2"}),
         "source_delta": (("kind", "j", "token", "depth", "d_model"), source.numpy(),
                          {"long_name": f"the source's ({family}) differences D_j, j = 1, 2, 3 (4 pairs)"})},
        coords={"source": np.array(names, dtype=object),
                "cycle": np.array(["→".join(map(str, c)) for c in CYCLES], dtype=object),
                "query": np.array(["E0", "E1", "E2"], dtype=object), "answer": np.array(["A0", "A1", "A2"], dtype=object),
                "kind": np.array(INTERVENTIONS, dtype=object), "k": [1, 2], "j": [1, 2, 3],
                "token": np.arange(base.shape[2]), "depth": np.arange(base.shape[3]), "prompt": np.arange(len(contexts)),
                "text": ("prompt", [c.text(0) for c in contexts.contexts])},
        attrs={"method": "binding_ids", "measure": "cross_subspace", "metric": "accuracy",
               "freeze_context": int(freeze), "split": int(bool(contexts.params.get("split")))})


def _subspace(run: Run, contexts: BindingContexts, freeze: bool, roots: list[tuple[float, float]],
              grid: int, tokens: tuple[int, int], cross: bool = False) -> xr.Dataset:
    """binding-iclr's binding subspace (Fig. 5; ``test_subspace``, ``coref/data_collection.py:
    578-717``, ``scripts/run_experiment.py:240-441``): Δ_1 and Δ_2 from 3-pair estimate contexts;
    the basis s0 = Δ_1 and o = Δ_2 − ⟨ŝ0, Δ_2⟩ ŝ0 (one Gram–Schmidt step over the entity and
    attribute vectors of every token and of the repository's L depths, resid_pre of blocks 0..L−1,
    together); in a 2-pair context, side 0's entity and
    attribute get r0·Δ_1 + r1·o (the root) and side 1's get −Δ_1 + x·Δ_1 + y·o, for x and y on
    ``grid`` points of [−0.5, 1.5], at every depth with the context frozen. Queries E0, E1 and a
    null entity; the accuracy is the mean-interventions' calibrated one (the stated binding wins
    after subtracting the null query's median), averaged over E0 and E1: high where side 1's
    ID stays distinguishable from side 0's. Δ_2's own coordinates are ``delta2_coords``.

    ``cross`` (the repository's ``--cross_countries``, ``coref/data_collection.py:626-628``): the
    attributes' coordinates go to the opposite sides, side 1's −Δ_1 staying where it is: side 0's
    attribute gets x·Δ_1 + y·o and side 1's −Δ_1 + r0·Δ_1 + r1·o."""
    model = run.model
    if contexts.n_pairs != 2 or len(contexts.estimate[0].entities) != 3:
        raise UsageError("the subspace test uses contexts of 2 pairs and estimate contexts of 3: "
                         "nr.tasks.binding_contexts(n, 2, n_estimate, estimate_pairs=3, split=True)")
    located, _, cand = _null_queries(model, contexts, tokens)
    delta = _repository_deltas(run, contexts.estimate, tokens).double()  # (kind, 2, token, D, d)
    s0, s1 = delta[:, 0], delta[:, 1]
    # The basis is the repository's: inner products over its L depths, resid_pre at blocks 0..L-1
    # (``coref/datascience.py:128-147``), not the last block's output, the toolkit's depth L. That
    # depth is edited too (as every depth is) but never read in a frozen context; in the products it
    # would weigh in (61 % of ‖Δ_1‖² on the embedded model) and tilt o.
    r0, r1 = s0[..., :-1, :], s1[..., :-1, :]
    along = float((r1 * r0).sum() / (r0 * r0).sum())
    ortho = s1 - along * s0  # orthogonal to Δ_1 over the repository's depths
    shared = ortho[..., :-1, :]
    coords = [along, float((r1 * shared).sum() / (shared * shared).sum())]
    axis = np.linspace(-0.5, 1.5, grid)
    cells = [(r, xi, yi) for r in range(len(roots)) for xi in range(grid) for yi in range(grid)]

    def edits(cell, loc):  # side 0 at the root, side 1 at (x, y) (the attributes' crossed with ``cross``)
        r, xi, yi = cell
        at = (roots[r][0] * s0 + roots[r][1] * ortho, axis[xi] * s0 + axis[yi] * ortho)  # coefficients' side

        def vec(kind, side):  # side 1's base ID (Δ_1) is taken out where it is, the coordinates put in
            return (-s0 if side == 1 else 0) + at[1 - side if cross and kind == 1 else side]
        return [(pos, vec(kind, side)[kind, t]) for kind in (0, 1) for side in (0, 1)
                for t, pos in enumerate(_span(loc, kind, side, tokens))]

    runs = _edited_runs(run, located, cand, 3, cells, edits, freeze, "subspace")
    logp = runs[1:].reshape(len(roots), grid, grid, *runs.shape[1:])
    right = _calibrated_right(logp)  # (root, x, y, query, prompt)
    # the figure's other statistic (paper_plots.ipynb plot_grid_logits): over the contexts' mean
    # log-probabilities, L(E0 -> A0) + L(E1 -> A1) - L(E0 -> A1) - L(E1 -> A0)
    mean = logp.mean(-1)  # (root, x, y, query, answer)
    margin = mean[..., 0, 0] + mean[..., 1, 1] - mean[..., 0, 1] - mean[..., 1, 0]
    return xr.Dataset(
        {"subspace_logprob": (("root", "x", "y", "query", "answer", "prompt"), logp, {"units": "nats"}),
         "subspace_margin": (("root", "x", "y"), margin,
                             {"long_name": "mean log P(E0->A0) + log P(E1->A1) - log P(E0->A1) - log P(E1->A0) "
                                           "(the figure's logit-difference panel)", "units": "nats"}),
         "subspace_accuracy": (("root", "x", "y"), right.mean(axis=(3, 4)),
                               {"long_name": "calibrated accuracy of the stated binding, over E0 and E1"}),
         "delta2_coords": ("basis", np.array(coords), {"long_name": "Δ_2 in the basis (Δ_1, o)"}),
         "delta": (("kind", "k", "token", "depth", "d_model"), delta.float().numpy())},
        coords={"root": np.arange(len(roots)), "root_x": ("root", [a for a, _ in roots]),
                "root_y": ("root", [b for _, b in roots]), "x": axis, "y": axis,
                "query": np.array(["E0", "E1", "null"], dtype=object), "answer": np.array(["A0", "A1"], dtype=object),
                "basis": np.array(["delta1", "ortho"], dtype=object), "kind": np.array(INTERVENTIONS, dtype=object),
                "k": [1, 2], "token": np.arange(delta.shape[2]), "depth": np.arange(delta.shape[3]),
                "prompt": np.arange(len(contexts)),
                "text": ("prompt", [c.text(0) for c in contexts.contexts])},
        attrs={"method": "binding_ids", "measure": "subspace", "metric": "accuracy", "freeze_context": int(freeze),
               "split": int(bool(contexts.params.get("split"))), "cross_attributes": int(cross)})
