"""EAP / EAP-IG edge scores and circuit faithfulness against plain PyTorch references
(tests/reference_edges.py: per-head attention calls, one autograd pass per node), pruning and
overlap against hand-made graphs, and the ``circuit`` CLI."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from typer.testing import CliRunner

import nnsight_reasoning as nr
from nnsight_reasoning.backend import graph
from nnsight_reasoning.cli.main import app
from nnsight_reasoning.errors import UsageError
from nnsight_reasoning.experiments.circuit import extract, greedy, overlap, prune, stability
from nnsight_reasoning.results.parts import parts_dir

from .clirun import reason_interp

from .reference_edges import assert_scores_match, node_names, patched_run, reference_edge_scores


def _ids(tok, pair):
    answer = [tok(" " + a, add_special_tokens=False)["input_ids"][0] for a in (pair.base_answer, pair.source_answer)]
    return tok(pair.base)["input_ids"], tok(pair.source)["input_ids"], answer


# gpt_neox: the embedded model (parallel residual) and a tiny sequential one; gpt2: Conv1D
# projections; llama: RMSNorm, rotary, grouped key/value heads.
CASES = [("embedded", 1), ("gpt_neox", 3), ("gpt2", 1), ("llama", 2)]


@pytest.mark.parametrize("name,ig_steps", CASES)
def test_edge_scores_and_circuit_runs_match_the_hook_reference(case_model, small_pairs, name, ig_steps):
    model, hf = case_model(name)
    pairs = small_pairs[:3]
    valid = graph.valid_edges(*graph.graph_shape(model)).numpy()
    ds = nr.circuit(model, pairs, ig_steps=ig_steps, sizes=(6, 25), batch_size=2 + (ig_steps if ig_steps > 1 else 0),
                    progress=False)  # one pair per pass
    nr.testing.assert_valid_result(ds)
    # one scoring pass per pair, then one faithfulness pass per pair for both circuits (3 rows each)
    assert ds.attrs["n_forward_passes"] == len(pairs) + len(pairs) * (1 if ig_steps > 1 else 2)
    tok = model.tokenizer
    ref, clean, corrupt, circuit = [], [], [], []
    for pair in pairs:
        base, source, (r1, r2) = _ids(tok, pair)
        ref.append(reference_edge_scores(hf, base, source, r1, r2, ig_steps).numpy())
        lg_corr, acts_corr = patched_run(hf, source)
        lg_clean, _ = patched_run(hf, base)
        corrupt.append(float(lg_corr[r1] - lg_corr[r2]))
        clean.append(float(lg_clean[r1] - lg_clean[r2]))
        row = []
        for size in ds["size"].values:
            removed = valid & ~ds["in_circuit"].sel(size=size).values.astype(bool)
            lg, _ = patched_run(hf, base, removed, acts_corr)
            row.append(float(lg[r1] - lg[r2]))
        circuit.append(row)
    got, want = assert_scores_match(ds, ref, valid)
    np.testing.assert_allclose(ds["clean_logit_diff"].values, clean, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ds["corrupt_logit_diff"].values, corrupt, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ds["circuit_logit_diff"].values, np.array(circuit).T, rtol=1e-4, atol=1e-4)
    faith = (np.mean(circuit, 0) - np.mean(corrupt)) / (np.mean(clean) - np.mean(corrupt))
    np.testing.assert_allclose(ds["faithfulness"].values, faith, rtol=1e-4, atol=1e-6)
    assert ds.attrs["method"] == ("eap_ig" if ig_steps > 1 else "eap")
    assert all(w.grad is None and w.requires_grad for w in model._module.parameters())  # no side effects


@pytest.mark.parametrize("task,metric,ig_steps", [("greater_than", "prob_diff", 2), ("sentiment", "logit_diff", 1),
                                                   ("greater_than", "logit_diff", 1)])
def test_answer_set_metrics_match_the_hook_reference(case_model, task, metric, ig_steps):
    """Tigges et al.'s set metrics (greater-than: Σ P(later years) − Σ P(the others); sentiment:
    mean logit of one class − of the other) as EAP's objective and in the circuit runs, against
    autograd and hooks on the same metric computed here from the last position's logits."""
    model, hf = case_model("embedded")
    pairs = nr.tasks.get_task(task).pairs(n_prompts=2, seed=4, tokenizer=model.tokenizer)
    ds = nr.circuit(model, pairs, ig_steps=ig_steps, sizes=(15,), metric=None if task == "greater_than" and
                    metric == "prob_diff" else metric, progress=False)
    assert ds.attrs["metric"] == metric and ds.attrs["answer_sets"] == 1
    tok = model.tokenizer
    valid = graph.valid_edges(*graph.graph_shape(model)).numpy()
    removed = valid & ~ds["in_circuit"].sel(size=15).values.astype(bool)
    ref, clean, corrupt, circuit = [], [], [], []
    for pair in pairs:
        good = [tok(" " + a, add_special_tokens=False)["input_ids"][0] for a in (pair.base_answer, *pair.alternatives)]
        bad = [tok(" " + a, add_special_tokens=False)["input_ids"][0] for a in pair.distractors]

        def m(logits, good=good, bad=bad):
            if metric == "prob_diff":
                p = torch.softmax(logits.double(), -1)
                return p[good].sum() - p[bad].sum()
            return logits[good].double().mean() - logits[bad].double().mean()

        base, source = tok(pair.base)["input_ids"], tok(pair.source)["input_ids"]
        ref.append(reference_edge_scores(hf, base, source, 0, 0, ig_steps, metric=m).numpy())
        lg_corr, acts_corr = patched_run(hf, source)
        corrupt.append(float(m(lg_corr)))
        clean.append(float(m(patched_run(hf, base)[0])))
        circuit.append(float(m(patched_run(hf, base, removed, acts_corr)[0])))
    want = np.where(valid, np.mean(ref, 0), np.nan)
    np.testing.assert_allclose(ds["score"].values, want, rtol=1e-4, atol=1e-5 * np.nanmax(np.abs(want)))
    np.testing.assert_allclose(ds["clean_logit_diff"].values, clean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ds["corrupt_logit_diff"].values, corrupt, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ds["circuit_logit_diff"].values[0], circuit, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("points,steps,alphas", [("eap_ig", 3, [1, 2 / 3, 1 / 3]), ("clean_corrupted", 7, [0, 1])])
def test_eap_ig_integration_points_match_the_hook_reference(case_model, small_pairs, points, steps, alphas):
    """hannamw/EAP-IG's integration points (k/m of the way from the corrupted input, k = 0 … m − 1)
    and its clean-corrupted method (both ends; ig_steps becomes 2) against autograd at those
    embeddings."""
    model, hf = case_model("embedded")
    pairs = small_pairs[:2]
    ds = nr.circuit(model, pairs, ig_steps=steps, ig_points=points, sizes=(), progress=False)
    assert ds.attrs["ig_points"] == points and ds.attrs["ig_steps"] == len(alphas)
    ref = []
    for pair in pairs:
        base, source, (r1, r2) = _ids(model.tokenizer, pair)
        ref.append(reference_edge_scores(hf, base, source, r1, r2, len(alphas), alphas=alphas).numpy())
    valid = graph.valid_edges(*graph.graph_shape(model)).numpy()
    want = np.where(valid, np.mean(ref, 0), np.nan)
    np.testing.assert_allclose(ds["score"].values, want, rtol=1e-4, atol=1e-5 * np.nanmax(np.abs(want)))
    with pytest.raises(UsageError, match="ig_points must be one of"):
        nr.circuit(model, pairs, ig_points="ends", progress=False)


@pytest.mark.parametrize("name,ablation", [("embedded", "zero"), ("embedded", "mean"), ("llama", "mean_positional")])
def test_zero_and_mean_ablation_match_the_hook_reference(case_model, name, ablation):
    """hannamw/EAP-IG's zero / mean / per-position mean interventions: EAP scores with
    a_u(corrupt) replaced by 0 or by the node's mean output over the ablation prompts (computed
    here from hooked runs), the circuit runs with the cut edges carrying those values, and the
    baseline with every edge cut."""
    model, hf = case_model(name)
    tok = model.tokenizer
    pairs = nr.tasks.arithmetic(n_prompts=12, seed=2, tokenizer=tok)
    by_len = {}
    for pr in pairs:
        by_len.setdefault(len(tok(pr.base)["input_ids"]), []).append(pr)
    chosen = max(by_len.values(), key=len)[:3]  # one token length, for the per-position mean
    others = [pr.base for pr in max(by_len.values(), key=len)[3:6]]
    data = None if ablation == "zero" else others if ablation == "mean_positional" else others + [
        "Q : How much is 3 plus 4 ? A :"]
    ds = nr.circuit(model, chosen, ig_steps=1, sizes=(12,), ablation=ablation, ablation_data=data, progress=False)
    assert ds.attrs["ablation"] == ablation
    blocks = len(graph.valid_edges(*graph.graph_shape(model)))
    up, _ = node_names(*graph.graph_shape(model)[:2])
    runs = [patched_run(hf, tok(t)["input_ids"])[1] for t in (data or [])]
    valid = graph.valid_edges(*graph.graph_shape(model)).numpy()
    removed = valid & ~ds["in_circuit"].sel(size=12).values.astype(bool)
    ref, clean, base, circuit = [], [], [], []
    for pair in chosen:
        b, src, (r1, r2) = _ids(tok, pair)
        t = len(b)
        if ablation == "zero":
            acts = {u: torch.zeros(t, hf.config.hidden_size) for u in up}
        elif ablation == "mean":
            acts = {u: torch.cat([r[u] for r in runs]).double().mean(0).expand(t, -1).float() for u in up}
        else:
            acts = {u: torch.stack([r[u] for r in runs]).double().mean(0).float() for u in up}
        ref.append(reference_edge_scores(hf, b, src, r1, r2, corrupt_acts=acts).numpy())
        lg = patched_run(hf, b)[0]
        clean.append(float(lg[r1] - lg[r2]))
        lg = patched_run(hf, b, valid, acts)[0]
        base.append(float(lg[r1] - lg[r2]))
        lg = patched_run(hf, b, removed, acts)[0]
        circuit.append(float(lg[r1] - lg[r2]))
    assert blocks == valid.shape[0]
    want = np.where(valid, np.mean(ref, 0), np.nan)
    np.testing.assert_allclose(ds["score"].values, want, rtol=1e-4, atol=1e-5 * np.nanmax(np.abs(want)))
    np.testing.assert_allclose(ds["clean_logit_diff"].values, clean, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ds["corrupt_logit_diff"].values, base, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ds["circuit_logit_diff"].values[0], circuit, rtol=1e-4, atol=1e-4)
    if ablation == "zero":
        for kwargs, msg in [(dict(ablation="mean", ig_steps=5), "pass ig_steps=1"),
                            (dict(ablation="none"), "ablation must be one of"),
                            (dict(ablation_data=["a"]), "ablation_data is for zero and mean"),
                            (dict(ablation="mean_positional", ig_steps=1), "one token length")]:
            with pytest.raises(UsageError, match=msg):
                nr.circuit(model, pairs, progress=False, **kwargs)


def test_greater_than_and_sentiment_pairs_follow_the_repository():
    for pair in nr.tasks.get_task("greater_than").pairs(n_prompts=20, seed=1).pairs:
        yy = int(pair.base_answer) - 1
        assert pair.source == pair.base.replace(f"{yy:02d} to the year", "01 to the year")
        assert {pair.base_answer, *pair.alternatives} == {f"{y:02d}" for y in range(yy + 1, 100)}
        assert set(pair.distractors) == {f"{y:02d}" for y in range(yy + 1)} and pair.source_answer == "02"
    from nnsight_reasoning.tasks.words import NEGATIVE_ANSWERS, POSITIVE_ANSWERS

    for k, pair in enumerate(nr.tasks.get_task("sentiment").pairs(n_prompts=6, seed=1).pairs):
        good, bad = (POSITIVE_ANSWERS, NEGATIVE_ANSWERS) if k % 2 == 0 else (NEGATIVE_ANSWERS, POSITIVE_ANSWERS)
        assert (pair.base_answer, *pair.alternatives) == tuple(good) and pair.distractors == tuple(bad)
        assert ("loved" in pair.base) == (k % 2 == 0) and ("hated" in pair.source) == (k % 2 == 0)
        assert len(pair.base.split()) == len(pair.source.split())
    with pytest.raises(Exception, match="tuple of non-empty strings"):
        nr.tasks.PromptPair("a", "b", "1", "2", alternatives=["3"])


@pytest.mark.parametrize("name", ["embedded", "gpt2", "llama"])
def test_random_edge_cuts_match_the_hook_reference(case_model, small_pairs, name):
    """Any set of cut edges (not only pruned circuits), several circuits in one pass."""
    model, hf = case_model(name)
    valid = graph.valid_edges(*graph.graph_shape(model))
    gen = torch.Generator().manual_seed(1)
    removed = torch.stack([valid & (torch.rand(valid.shape, generator=gen) < q) for q in (0.05, 0.3, 1.0)])
    tok = model.tokenizer
    rows = [_ids(tok, p) for p in small_pairs[:2]]
    if len(rows[0][0]) != len(rows[1][0]):
        rows = rows[:1]
    p = len(rows)
    ids = torch.tensor([r[1] for r in rows] + [r[0] for r in rows])
    got = graph.edge_patched_logits(model, ids, torch.tensor([r[2] for r in rows] * 2), removed)
    for j, (base, source, ans) in enumerate(rows):
        lg_corr, acts_corr = patched_run(hf, source)
        np.testing.assert_allclose(got[j].numpy(), lg_corr[ans].numpy(), rtol=1e-5, atol=1e-4)
        for c in range(len(removed)):
            lg, _ = patched_run(hf, base, removed[c].numpy(), acts_corr)
            np.testing.assert_allclose(got[p + c * p + j].numpy(), lg[ans].numpy(), rtol=1e-5, atol=1e-4)
    # cutting every edge is the corrupted run
    np.testing.assert_allclose(got[p + 2 * p:].numpy(), got[:p].numpy(), rtol=1e-5, atol=1e-4)


def test_exact_edge_patching_matches_the_hook_reference(case_model, small_pairs):
    model, hf = case_model("llama")
    pairs = small_pairs[:2]
    ds = nr.edge_patching(model, pairs, batch_size=16, progress=False)  # several passes per pair
    nr.testing.assert_valid_result(ds)
    valid = graph.valid_edges(*graph.graph_shape(model)).numpy()
    want = np.zeros(valid.shape)
    for pair in pairs:
        base, source, (r1, r2) = _ids(model.tokenizer, pair)
        _, acts_corr = patched_run(hf, source)
        lg, _ = patched_run(hf, base)
        for i, j in np.argwhere(valid):
            cut = np.zeros(valid.shape, bool)
            cut[i, j] = True
            lc, _ = patched_run(hf, base, cut, acts_corr)
            want[i, j] += float((lc[r1] - lc[r2]) - (lg[r1] - lg[r2])) / len(pairs)
    got = ds["score"].values
    assert np.array_equal(np.isnan(got), ~valid) and ds.attrs["method"] == "edge_patching"
    np.testing.assert_allclose(got[valid], want[valid], rtol=1e-4, atol=1e-4)
    assert ds.sizes["size"] == 0 and np.abs(want[valid]).max() > 0.1


def test_valid_edges_follow_the_residual_stream():
    up, down = node_names(2, 1)  # input a0.0 m0 a1.0 m1 | a0.0 m0 a1.0 m1 logits
    seq = graph.valid_edges(2, 1, parallel=False).numpy()
    par = graph.valid_edges(2, 1, parallel=True).numpy()
    edge = {(u, d) for i, u in enumerate(up) for j, d in enumerate(down) if seq[i, j]}
    assert ("a0.0", "m0") in edge and ("m0", "a0.0") not in edge and ("m1", "logits") in edge
    assert ("a1.0", "a1.0") not in edge and ("m0", "a1.0") in edge and ("input", "m1") in edge
    assert seq.sum() == par.sum() + 2  # the two same-layer attention -> MLP edges
    assert not par[up.index("a0.0"), down.index("m0")]


def test_extract_takes_top_edges_and_prunes_dangling_ones():
    up, down = node_names(2, 1)
    score = np.where(graph.valid_edges(2, 1, parallel=False).numpy(), 0.01, np.nan)

    def put(u, d, v):
        score[up.index(u), down.index(d)] = v

    put("input", "a0.0", -10)  # on a path input -> a0.0 -> logits
    put("a0.0", "logits", 9)
    put("m0", "m1", -8)  # m0 is never reached from the input, m1 never reaches the logits
    put("a0.0", "a1.0", 7)  # a1.0 reaches nothing
    kept = extract(score, 4)
    assert {(up[i], down[j]) for i, j in zip(*np.nonzero(kept))} == {("input", "a0.0"), ("a0.0", "logits")}
    assert extract(score, 10 ** 6).sum() == np.isfinite(score).sum()  # everything connects via input


def _node(name):
    return name.split("<")[0]  # a head's q, k or v input belongs to the head


def _greedy_by_scanning(weight, valid, n_edges, up, down):
    """EAP-IG's apply_greedy restated without a heap: n times, scan every edge into a node in
    the graph (the logits, and each upstream node added so far) for the largest weight."""
    n_up, n_down = weight.shape
    nodes, keep = {"logits"}, np.zeros(weight.shape, bool)
    for _ in range(n_edges):
        cands = [(weight[u, v], -(u * n_down + v), u, v) for u in range(n_up) for v in range(n_down)
                 if valid[u, v] and not keep[u, v] and _node(down[v]) in nodes]
        if not cands:
            break
        _, _, u, v = max(cands)
        keep[u, v] = True
        nodes.add(up[u])
    return keep


def _prune_like_eap_ig(edges, up, down):
    """EAP-IG's Graph.prune restated: drop nodes without an incoming (the input excepted) or an
    outgoing edge (the logits excepted), then the edges of dropped nodes, until nothing changes."""
    edges = edges.copy()
    owner = [_node(v) for v in down]
    while True:
        has_in = {"input"} | {owner[v] for v in np.nonzero(edges.any(0))[0]}
        alive = {u for i, u in enumerate(up) if edges[i].any() and u in has_in} | {"logits"}
        new = edges & np.array([u in alive for u in up])[:, None] & np.array([o in alive for o in owner])[None, :]
        if (new == edges).all():
            return new
        edges = new


@pytest.mark.parametrize("shape,qkv", [((4, 4, True), False), ((2, 3, False), False), ((3, 2, True), True),
                                       ((2, 2, False), True)])
def test_greedy_selection_and_pruning_follow_eap_ig(shape, qkv):
    valid = graph.valid_edges(*shape, qkv=qkv).numpy()
    up, down = node_names(*shape[:2], qkv)
    rng = np.random.default_rng(0)
    for trial in range(5):
        score = np.where(valid, rng.normal(size=valid.shape) * rng.choice([0.01, 1, 10], size=valid.shape), np.nan)
        weight = np.nan_to_num(np.abs(score), nan=-1.0)
        for n in (1, 3, 10, 40, int(valid.sum()), 10 ** 4):
            got = greedy(weight, n)
            want = _greedy_by_scanning(weight, valid, n, up, down)
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(extract(score, n, "greedy"), _prune_like_eap_ig(want, up, down))
            # the top-n circuit too is pruned as EAP-IG prunes
            top = np.zeros(valid.shape, bool)
            top.flat[np.argsort(-weight, axis=None, kind="stable")[:min(n, int(valid.sum()))]] = True
            np.testing.assert_array_equal(extract(score, n), _prune_like_eap_ig(top, up, down))
            np.testing.assert_array_equal(prune(top), _prune_like_eap_ig(top, up, down))
    with pytest.raises(UsageError, match="selection must be one of topn, greedy"):
        extract(score, 3, "best")


def test_min_fraction_search_finds_the_smallest_circuit_by_the_documented_rule(embedded_model, small_pairs):
    """The search's answer recomputed from the fractions of the sizes the rule looks at (measured
    by separate nr.circuit calls): the first grid size reaching the threshold, then the smallest
    size reaching it since the grid point before."""
    pairs = small_pairs[:3]
    n_valid = 191
    searches = [(0.8, (10, 300, 10)), (0.5, (3, 50, 7)), (1.01, (25, 1600, 25))]
    grids = {se: [s for s in range(*se) if s <= n_valid] + ([n_valid] if se[1] > n_valid else []) for _, se in searches}

    def fractions(sizes):
        ds = nr.circuit(embedded_model, pairs, ig_steps=1, sizes=sorted(sizes), selection="greedy", progress=False)
        return ds, dict(zip(ds["size"].values.tolist(), ds["fraction"].values))

    _, frac = fractions(set().union(*grids.values()))
    want = {}
    for threshold, se in searches:
        hits = [g for g in grids[se] if frac[g] >= threshold]
        want[se] = None if not hits else (max([s for s in grids[se] if s < hits[0]], default=0), hits[0])
    every, more = fractions({s for w in want.values() if w for s in range(w[0] + 1, w[1] + 1)})
    frac.update(more)
    for threshold, se in searches:
        ds = nr.circuit(embedded_model, pairs, ig_steps=1, sizes=(), selection="greedy", min_fraction=threshold,
                        search=se, progress=False)
        nr.testing.assert_valid_result(ds)
        if want[se] is None:
            assert int(ds["min_size"]) == -1 and ds["min_circuit"].values.sum() == 0
            continue
        before, g = want[se]
        size = min(s for s in range(before + 1, g + 1) if frac[s] >= threshold)
        assert int(ds["min_size"]) == size, (threshold, se)
        np.testing.assert_array_equal(ds["min_circuit"].values, every["in_circuit"].sel(size=size).values)
        assert int(ds["min_n_edges"]) == int(every["n_edges"].sel(size=size))
        assert float(ds["min_faithfulness"]) == pytest.approx(float(every["faithfulness"].sel(size=size)), abs=1e-5)
        measured = np.isfinite(ds["search_fraction"].values)
        sizes = ds["search_size"].values[measured]
        assert set(sizes) == set(grids[se]) | set(range(before + 1, g))
        np.testing.assert_allclose(ds["search_fraction"].values[measured], [frac[s] for s in sizes], rtol=1e-5,
                                   atol=1e-6)
    for kwargs, msg in [(dict(selection="best"), "selection must be one of"),
                        (dict(min_fraction=0.8, search=(10, 5, 1)), "search must be")]:
        with pytest.raises(UsageError, match=msg):
            nr.circuit(embedded_model, pairs, progress=False, **kwargs)


def test_eap_on_the_embedded_model_finds_a_faithful_circuit(embedded_model, tmp_path):
    """The model card's circuit figures re-measured: faithfulness of EAP-IG and EAP circuits, and
    the edge scores' Pearson r against exact edge patching (an independent numpy r)."""
    from nnsight_reasoning import embedded

    card, data = embedded.card()["circuits"], dict(embedded.card()["circuit_data"])
    sizes = tuple(data.pop("sizes"))
    pairs = nr.tasks.arithmetic(**data)
    ds = nr.circuit(embedded_model, pairs, ig_steps=5, sizes=(*sizes, 10 ** 4), progress=False)
    nr.testing.assert_valid_result(ds)
    f = ds["faithfulness"].values
    assert f[:-1] == pytest.approx(card["faithfulness_ig5"], abs=1e-4)
    assert abs(f[-1] - 1) < 1e-6  # all edges = the model itself
    assert ds["n_edges"].values[-1] == np.isfinite(ds["score"].values).sum() == 191
    plain = nr.circuit(embedded_model, pairs, ig_steps=1, sizes=sizes, progress=False)
    assert plain["faithfulness"].values == pytest.approx(card["faithfulness_ig1"], abs=1e-4)
    half = nr.tasks.arithmetic(n_prompts=data["n_prompts"] // 2, seed=data["seed"])
    exact = nr.edge_patching(embedded_model, half, progress=False)["score"].values
    ok = np.isfinite(exact)
    for m in (1, 5):
        est = nr.circuit(embedded_model, half, ig_steps=m, sizes=(), progress=False)["score"].values
        assert (np.isfinite(est) == ok).all()
        assert np.corrcoef(exact[ok], est[ok])[0, 1] == pytest.approx(card[f"r_exact_ig{m}"], abs=1e-4)
    nr.save_result(ds, tmp_path / "c.nc")
    back = nr.load_result(tmp_path / "c.nc")
    np.testing.assert_array_equal(back["score"].values, ds["score"].values)
    assert list(back["upstream_kind"].values[:2]) == ["input", "head"] and back.attrs["ig_steps"] == 5


def test_overlap_is_jaccard_of_each_checkpoints_circuit(embedded_model):
    pairs = nr.tasks.arithmetic(n_prompts=8, seed=2)
    ds = nr.circuit(None, pairs, ig_steps=2, sizes=(30,), progress=False, revisions="step256,main")
    main = nr.circuit(embedded_model, pairs, ig_steps=2, sizes=(30,), progress=False)
    nr.testing.assert_valid_result(ds)
    np.testing.assert_allclose(ds["score"].sel(checkpoint="main").values, main["score"].values, rtol=1e-6)
    jac = overlap(ds, 30)
    sets = [{(i, j) for i, j in zip(*np.nonzero(ds["in_circuit"].sel(checkpoint=c, size=30).values))}
            for c in ("step256", "main")]
    assert jac.sel(checkpoint="step256", checkpoint_b="main") == len(sets[0] & sets[1]) / len(sets[0] | sets[1])
    assert np.allclose(np.diag(jac.values), 1) and np.allclose(jac.values, jac.values.T)
    with pytest.raises(UsageError, match="compares checkpoints"):
        overlap(main, 30)
    # Tigges et al.'s stability measures on the same two circuits, from edge-name dictionaries
    st = stability(ds, 30)
    scores = [{(u, d): float(ds["score"].sel(checkpoint=c).values[u, d]) for u, d in edges}
              for c, edges in zip(("step256", "main"), sets)]
    a, b = scores
    assert st["jaccard"].values.tolist() == [len(sets[0] & sets[1]) / len(sets[0] | sets[1])]
    assert st["additions"].values.tolist() == [len(sets[1] - sets[0])] and st["ged"].values.tolist() == \
        [len(sets[1] ^ sets[0])]
    assert st["weighted_additions"].values[0] == pytest.approx(sum(b[e] for e in sets[1] - sets[0]))
    assert st["weighted_deletions"].values[0] == pytest.approx(sum(a[e] for e in sets[0] - sets[1]))
    union = sets[0] | sets[1]
    wj = sum(min(abs(a.get(e, 0)), abs(b.get(e, 0))) for e in union) / sum(max(abs(a.get(e, 0)), abs(b.get(e, 0)))
                                                                           for e in union)
    assert st["weighted_jaccard"].values[0] == pytest.approx(wj) and st["ewma_change"].values[0] == pytest.approx(
        0.5 * (1 - wj))
    assert st["weighted_jaccard_to_final"].values.tolist() == pytest.approx([wj, 1.0])
    with pytest.raises(UsageError, match="compares checkpoints"):
        stability(main)


def test_stability_compares_each_checkpoints_own_smallest_faithful_circuit(small_pairs):
    """With a search over a sweep, the repository compares the graph each checkpoint's search chose
    (get_circuits_over_time.py:471-476): stability() without n_edges uses each min_circuit, and
    with n_edges one size for all."""
    ds = nr.circuit(None, small_pairs[:3], ig_steps=1, sizes=(), selection="greedy", min_fraction=0.8,
                    search=(10, 300, 10), progress=False, revisions="step1500,main")
    sets = [{(i, j) for i, j in zip(*np.nonzero(ds["min_circuit"].sel(checkpoint=c).values))}
            for c in ("step1500", "main")]
    assert sets[0] and sets[1] and sets[0] != sets[1]  # two circuits, not one size for both
    st = stability(ds)
    assert st.attrs["circuits"] == "min_circuit" and st["min_size"].values.tolist() == ds["min_size"].values.tolist()
    assert st["jaccard"].values.tolist() == [len(sets[0] & sets[1]) / len(sets[0] | sets[1])]
    assert st["additions"].values.tolist() == [len(sets[1] - sets[0])]
    assert st["deletions"].values.tolist() == [len(sets[0] - sets[1])]
    fixed = stability(ds, 30)
    assert fixed.attrs["circuits"] == "n_edges" and fixed.attrs["n_edges"] == 30 and "min_size" not in fixed
    # a checkpoint whose search found nothing: the repository's search returns its end, so the
    # circuit of the search's stop size (300 edges asked; every valid edge here, 191) stands in
    none = ds.copy()
    none["min_size"] = none["min_size"].copy(data=[-1, int(ds["min_size"].sel(checkpoint="main"))])
    end = extract(ds["score"].sel(checkpoint="step1500").values, 300, "greedy")
    ends = {(i, j) for i, j in zip(*np.nonzero(end))}
    assert stability(none)["jaccard"].values.tolist() == [len(ends & sets[1]) / len(ends | sets[1])]


def test_stability_over_several_checkpoints_follows_the_repository_definitions():
    """EWMA over transitions and the summed score changes over every edge, on scores drawn here."""
    rng = np.random.default_rng(0)
    score = rng.normal(size=(4, 6, 6))  # upstream node j + 1 is downstream node j
    score[:, 4, 0] = np.nan  # an edge that does not exist
    ds = xr.Dataset({"score": (("checkpoint", "upstream", "downstream"), score)},
                    coords={"checkpoint": ["step0", "step1", "step2", "main"]})
    st = stability(ds, 8, alpha=0.3)
    sets = [extract(score[k], 8) for k in range(4)]
    ewma = 0.0
    for k in range(3):
        a = {e: abs(score[k][e]) for e in zip(*np.nonzero(sets[k]))}
        b = {e: abs(score[k + 1][e]) for e in zip(*np.nonzero(sets[k + 1]))}
        union = set(a) | set(b)
        wj = sum(min(a.get(e, 0), b.get(e, 0)) for e in union) / sum(max(a.get(e, 0), b.get(e, 0)) for e in union)
        ewma = 0.3 * (1 - wj) + 0.7 * ewma
        assert st["weighted_jaccard"].values[k] == pytest.approx(wj) and st["ewma_change"].values[k] == pytest.approx(ewma)
        change = [score[k + 1][e] - score[k][e] for e in np.ndindex(6, 6) if np.isfinite(score[k][e])]
        assert st["summed_increases"].values[k] == pytest.approx(sum(c for c in change if c > 0))
        assert st["summed_decreases"].values[k] == pytest.approx(-sum(c for c in change if c < 0))
    assert list(st["transition"].values) == ["step0→step1", "step1→step2", "step2→main"]
    with pytest.raises(UsageError, match="alpha must be"):
        stability(ds, 8, alpha=0)


def test_eap_bad_input(embedded_model, small_pairs):
    for kwargs, msg in [(dict(ig_steps=0), "ig_steps must be"), (dict(sizes=(0, 5)), "sizes must be >= 1"),
                        (dict(batch_size=3), "batch_size must hold")]:
        with pytest.raises(UsageError, match=msg):
            nr.circuit(embedded_model, small_pairs, progress=False, **kwargs)
    with pytest.raises(UsageError, match=r"circuit\(\) takes PromptPairs .*kth_smallest_pairs.* \(got ReasoningPrompts\)"):
        nr.circuit(embedded_model, nr.tasks.kth_smallest(4), progress=False)
    with pytest.raises(UsageError, match=r"edge_patching\(\) takes PromptPairs .* \(got ReasoningPrompts\)"):
        nr.edge_patching(embedded_model, nr.tasks.kth_smallest(4), progress=False)
    with pytest.raises(UsageError, match="batch_size must hold"):
        nr.edge_patching(embedded_model, small_pairs, batch_size=1, progress=False)
    with pytest.raises(UsageError, match="no prompt pairs"):
        nr.circuit(embedded_model, [], progress=False)


def test_cli_circuit_sweep_and_plots(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = CliRunner().invoke
    res = run(app, ["circuit", "--n-prompts", "6", "--ig-steps", "2", "--sizes", "10,40", "--revisions",
                    "step512,main", "--selection", "greedy", "--min-fraction", "0.8", "--search", "10:300:10",
                    "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "faithfulness" in res.output and "overlap (Jaccard)" in res.output and "→" in res.output
    path = tmp_path / "results" / "circuit_arithmetic_embedded_step512-main.nc"
    ds = nr.load_result(path)
    nr.testing.assert_valid_result(ds)
    assert ds.sizes["checkpoint"] == 2 and ds.attrs["method"] == "eap_ig" and ds.attrs["selection"] == "greedy"
    assert ds["min_size"].dims == ("checkpoint",) and ds["search_fraction"].dims == ("checkpoint", "search_size")
    assert "smallest circuit with circuit / clean >= 0.8" in res.output
    res = run(app, ["show", str(path)])
    assert res.exit_code == 0 and "faithfulness" in res.output and "overlap (Jaccard)" in res.output, res.output
    assert "stability (Tigges" in res.output
    for kind in ("circuit", "faithfulness", "overlap", "stability"):
        res = run(app, ["plot", str(path), "--kind", kind])
        assert res.exit_code == 0, res.output
        assert (tmp_path / "results" / f"circuit_arithmetic_embedded_step512-main.{kind}.png").stat().st_size > 5000
    for args, msg in [(["--sizes", "ten"], "--sizes must be"), (["--task", "binding"], "no clean/corrupted"),
                      (["--ig-steps", "0"], "ig_steps must be"), (["--model", "no/such-model"], ""),
                      (["--exact", "--ig-steps", "2"], "are for EAP"),
                      (["--search", "10:20"], "--search must be START:STOP:STEP"),
                      (["--selection", "best"], "selection must be one of"),
                      (["--metric", "kl"], "metric must be one of logit_diff, prob_diff"),
                      (["--ig-points", "ends"], "ig_points must be one of"),
                      (["--ablation", "mean"], "pass ig_steps=1 (--ig-steps 1)"),
                      (["--batch-size", "3"], "batch_size must hold")]:
        res = run(app, ["circuit", "--n-prompts", "4", "--no-progress", "--out", str(tmp_path / "bad.nc"), *args])
        assert res.exit_code == 2 and msg in res.output, res.output
        assert not (tmp_path / "bad.nc").exists()
    res = run(app, ["plot", str(path), "--kind", "entropy"])
    assert res.exit_code == 2 and "circuit, faithfulness, overlap" in res.output


def test_cli_exact_edge_patching_writes_its_own_file(tmp_path, monkeypatch, embedded_model):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["circuit", "--exact", "--n-prompts", "3", "--seed", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "exact edge patching" in res.output and "→" in res.output and "3 forward passes" in res.output
    path = tmp_path / "results" / "edge_patching_arithmetic_embedded_main.nc"
    ds = nr.load_result(path)
    nr.testing.assert_valid_result(ds)
    assert ds.attrs["method"] == "edge_patching" and ds.sizes["size"] == 0 and ds.attrs["batch_size"] == 256
    want = nr.edge_patching(embedded_model, nr.tasks.arithmetic(n_prompts=3, seed=1), progress=False)
    np.testing.assert_array_equal(ds["score"].values, want["score"].values)
    assert not (tmp_path / "results" / "circuit_arithmetic_embedded_main.nc").exists()


@pytest.mark.slow  # kill-and-resume: the slow tier's
def test_sigkill_mid_circuit_resumes_to_the_same_values(tmp_path, embedded_model):
    """A real SIGKILL after the third finished pass (the scoring passes), then the same command."""
    out = tmp_path / "c.nc"
    args = ["circuit", "--n-prompts", "4", "--seed", "5", "--ig-steps", "2", "--sizes", "10,40", "--batch-size", "4",
            "--no-progress", "--out", str(out)]
    killed = reason_interp(args, env={"REASON_INTERP_TEST_KILL_AFTER": "3"})
    assert killed.returncode == -9 and not out.exists(), killed.stderr
    n_done = len(list(parts_dir(out).glob("*.npz")))
    resumed = reason_interp(args)
    assert resumed.returncode == 0, resumed.stderr
    ds = nr.load_result(out)
    assert ds.attrs["n_resumed_passes"] == n_done == 3 and ds.attrs["n_forward_passes"] == 8
    assert not parts_dir(out).exists()
    want = nr.circuit(embedded_model, nr.tasks.arithmetic(n_prompts=4, seed=5), ig_steps=2, sizes=(10, 40),
                      batch_size=4, progress=False)
    for v in want.data_vars:  # another process (its own thread count): equal up to float summation order
        np.testing.assert_allclose(ds[v].values, want[v].values, rtol=1e-9, atol=1e-9, err_msg=v)


@pytest.mark.parametrize("name,points,steps,alphas", [("embedded", "eap_ig", 2, [0.5, 0.0]),
                                                      ("gpt2", "midpoint", 2, [0.25, 0.75])])
def test_eap_ig_on_activations_matches_the_hook_reference(case_model, small_pairs, name, points, steps, alphas):
    """hannamw/EAP-IG's get_scores_ig_activations: one node group's output interpolated at a time."""
    from .reference_edges import reference_activation_ig_scores

    model, hf = case_model(name)
    pairs = small_pairs[:1]
    ds = nr.circuit(model, pairs, ig_steps=steps, ig_points=points, ig_variant="activations", sizes=(), progress=False)
    assert ds.attrs["ig_variant"] == "activations"
    valid = graph.valid_edges(*graph.graph_shape(model)).numpy()
    tok = model.tokenizer
    ref = []
    for pair in pairs:
        base, source, (r1, r2) = _ids(tok, pair)
        ref.append(reference_activation_ig_scores(hf, base, source, r1, r2, alphas).numpy())
    want = np.where(valid, np.mean(ref, 0), np.nan)
    np.testing.assert_allclose(ds["score"].values, want, rtol=1e-4, atol=1e-5 * np.nanmax(np.abs(want)))
    with pytest.raises(UsageError, match="ig_variant='activations' integrates"):
        nr.circuit(model, pairs, ig_steps=1, ig_variant="activations")
    with pytest.raises(UsageError, match="ig_variant must be one of"):
        nr.circuit(model, pairs, ig_variant="weights")


def test_threshold_circuits_are_every_edge_at_or_above_the_threshold(embedded_model, small_pairs):
    """EAP-IG's apply_threshold(t, absolute=True), then pruned; measured like the sizes."""
    ds = nr.circuit(embedded_model, small_pairs[:3], ig_steps=1, sizes=(20,), thresholds=(0.05, 0.5, 1e9),
                    progress=False)
    nr.testing.assert_valid_result(ds)
    score = ds.score.values
    for t in ds.threshold.values:
        at = np.nan_to_num(np.abs(score), nan=-1) >= t
        assert int(ds.threshold_size.sel(threshold=t)) == at.sum()
        assert int(ds.threshold_n_edges.sel(threshold=t)) == prune(at).sum()
    big = ds.sel(threshold=1e9)
    assert int(big.threshold_size) == 0 and np.isnan(big.threshold_faithfulness)
    # a threshold's circuit is measured as the size-n circuit with n its edge count
    n = int(ds.threshold_size.sel(threshold=0.05))
    again = nr.circuit(embedded_model, small_pairs[:3], ig_steps=1, sizes=(n,), progress=False)
    # (float32 runs batched differently: a few ulps apart)
    np.testing.assert_allclose(ds.threshold_faithfulness.sel(threshold=0.05), again.faithfulness.sel(size=n),
                               rtol=1e-5)
    np.testing.assert_allclose(ds.threshold_logit_diff.sel(threshold=0.05), again.circuit_logit_diff.sel(size=n),
                               rtol=1e-5, atol=1e-5)
    for kwargs, msg in [(dict(thresholds=(-1,)), "thresholds must be finite"),
                        (dict(thresholds=(0.1,), selection="greedy"), "use it with selection='topn'")]:
        with pytest.raises(UsageError, match=msg):
            nr.circuit(embedded_model, small_pairs[:2], ig_steps=1, **kwargs)
