"""Stolfo et al.'s other effects, the embedding site, prediction change and accuracy filtering,
against plain PyTorch hooks (tests/reference.py) and effect formulas written out here again
from lm-arithmetic's notebooks (notebooks_utils.py:119-166), not imported from the toolkit."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr
from transformers import AutoModelForCausalLM

import nnsight_reasoning as nr
from nnsight_reasoning.errors import UsageError
from nnsight_reasoning.tasks import PromptPair, PromptPairs, TaskError

from .reference import logit_scale, reference_scores

EPS = np.finfo(np.float32).eps


def _hf(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()


# lm-arithmetic's compute_effects: p_g = P(r), p_g_prime = P(r'), p_prime_g = P_z(r), p_prime_g_prime = P_z(r')
def _repo_effects(p_g, p_g_prime, p_prime_g, p_prime_g_prime):
    return {
        "stolfo_ie": ((p_g - p_prime_g) / p_prime_g + (p_prime_g_prime - p_g_prime) / p_g_prime) / 2,
        "absolute": (p_g - p_prime_g) + (p_prime_g_prime - p_g_prime),
        "source_increase": p_prime_g_prime - p_g_prime,
        "relative_source_increase": (p_prime_g_prime - p_g_prime) / p_g_prime,
        "same_result": abs(p_g - p_prime_g),
    }


def _logit_diff(lg, lg_star):
    return (lg_star[1] - lg_star[0]) - (lg[1] - lg[0])


def _close(got, want, scale, what, metric="logit_diff", p=None, p_star=None):
    # Each float32 logit may move by a few ulps of the largest logit between batched and
    # single runs (tests/test_patching.py measures ~8), so each probability by that much
    # relative to itself: delta = 32 ulps of the logit scale. The bound on a metric follows
    # from its formula (first-order error propagation of delta through each term), so a ratio
    # of a small probability is held to what float32 can give, and a wrong row, site or
    # formula (an O(1) error) still fails.
    delta = 32 * EPS * max(1.0, scale)
    if metric == "logit_diff":
        bound = 4 * delta  # four logits, each within delta
    else:
        (pg, pgp), (psg, psgp) = p, p_star  # P(r), P(r'); P*(r), P*(r')
        bound = delta * {"stolfo_ie": pg / psg + psgp / pgp,
                         "absolute": pg + psg + psgp + pgp,
                         "source_increase": psgp + pgp,
                         "relative_source_increase": 2 * psgp / pgp,
                         "same_result": pg + psg}[metric]
    err = abs(got - want)
    assert err <= bound * (1 + 1e-6) + 1e-12, f"{what}: {got} vs {want} (error {err:.1e} > bound {bound:.1e})"


@pytest.fixture(scope="module")
def pairs(embedded_tokenizer):
    return nr.tasks.arithmetic(n_prompts=4, seed=5, tokenizer=embedded_tokenizer)


@pytest.fixture(scope="module")
def reference(embedded_model, pairs):
    hf = _hf(nr.models.model_info(embedded_model).path)
    return reference_scores(hf, embedded_model.tokenizer, list(pairs), ["embed", "attn", "mlp", "resid"], "all")


@pytest.mark.parametrize("metric", ["stolfo_ie", "absolute", "source_increase", "relative_source_increase",
                                    "same_result", "logit_diff"])
def test_every_effect_and_the_total_effect_match_hooks(embedded_model, pairs, reference, metric):
    clean, patched = reference
    ds = nr.patch(embedded_model, pairs, sites=["embed", "attn", "mlp", "resid"], positions="all", metric=metric,
                  batch_size=64, progress=False)
    assert ds.attrs["metric"] == metric and list(ds.layer.values) == [-1, 0, 1, 2, 3]
    scale = logit_scale(_hf(nr.models.model_info(embedded_model).path), embedded_model.tokenizer, pairs)
    for i, c in enumerate(clean):
        (pb, lb, _, _), (ps, ls, _, _) = c["base"], c["source"]
        te = _logit_diff(lb, ls) if metric == "logit_diff" else _repo_effects(pb[0], pb[1], ps[0], ps[1])[metric]
        _close(float(ds.total_effect[i]), te, scale, f"total effect of pair {i}", metric, pb, ps)
        np.testing.assert_allclose([ds.source_prompt_p_base[i], ds.source_prompt_p_source[i]], ps, rtol=1e-5, atol=1e-7)
    for (site, i, layer, k), (p_star, l_star, _, _) in patched.items():
        pb, lb = clean[i]["base"][0], clean[i]["base"][1]
        want = _logit_diff(lb, l_star) if metric == "logit_diff" else \
            _repo_effects(pb[0], pb[1], p_star[0], p_star[1])[metric]
        got = float(ds[site].sel(layer=layer).isel(prompt=i, position=k))
        _close(got, want, scale, f"{site} layer {layer} position {k} of pair {i}", metric, pb, p_star)
    n_values = sum(int(np.isfinite(ds[s].values).sum()) for s in ("embed", "attn", "mlp", "resid"))
    assert n_values == len(patched)  # nothing the hooks did not compute, nothing missing
    # the embeddings exist at layer -1 only, the blocks at 0..L-1 only
    assert np.isnan(ds.embed.sel(layer=[0, 1, 2, 3]).values).all() and np.isnan(ds.mlp.sel(layer=-1).values).all()


def test_prediction_codes_match_the_top_token_of_hooked_runs(embedded_model, pairs, reference):
    clean, patched = reference
    ds = nr.patch(embedded_model, pairs, sites=["embed", "attn", "mlp", "resid"], positions="all", progress=False)
    tok = embedded_model.tokenizer
    checked = set()
    for (site, i, layer, k), (_, _, top, gap) in patched.items():
        base_top, base_gap = clean[i]["base"][2], clean[i]["base"][3]
        if min(gap, base_gap) < 1e-3:  # a near tie: float32 noise may pick either token
            continue
        r2 = tok(" " + pairs[i].source_answer, add_special_tokens=False)["input_ids"][0]
        want = 0 if top == base_top else 1 if top == r2 else 2
        assert int(ds[f"{site}_prediction"].sel(layer=layer).isel(prompt=i, position=k)) == want
        checked.add(want)
    assert checked == {0, 1, 2}  # the three outcomes all occur on these pairs
    # past each prompt's end there is no value
    assert (ds["mlp_prediction"].values[np.isnan(ds["mlp"].values)] == -1).all()
    shares = nr.prediction_change(ds)
    for position in range(ds.sizes["position"]):  # shares over the prompts that have the position
        code = ds["mlp_prediction"].sel(layer=3, position=position).values
        code = code[code >= 0]
        np.testing.assert_allclose(shares["mlp"].sel(layer=3, position=position).values,
                                   [(code == 1).mean(), (code == 2).mean()])


def test_correct_only_keeps_the_pairs_the_model_gets_right(embedded_model, pairs):
    # two pairs with a wrong label (on the base side, then on the source side) among right ones
    wrong = [PromptPair(pairs[0].base, pairs[0].source, "0", pairs[0].source_answer),
             PromptPair(pairs[1].base, pairs[1].source, pairs[1].base_answer, "0")]
    mixed = PromptPairs("custom", {}, tuple(wrong) + tuple(pairs))
    kw = dict(sites=["mlp"], metric="logit_diff", progress=False)
    ds = nr.patch(embedded_model, mixed, correct_only=True, **kw)
    full = nr.patch(embedded_model, mixed, **kw)
    assert ds.attrs["correct_only"] == 1 and full.attrs["correct_only"] == 0 and "correct" not in full
    assert ds.correct.values.tolist() == [0, 0, 1, 1, 1, 1]  # the embedded model answers these pairs right
    assert np.isnan(ds.mlp.values[:2]).all() and (ds.mlp_prediction.values[:2] == -1).all()
    assert np.isnan(ds.total_effect.values[:2]).all() and np.isfinite(ds.total_effect.values[2:]).all()
    # other passes (the filtered batch is smaller): float32 noise of 4 logits, a few ulps each
    scale = logit_scale(_hf(nr.models.model_info(embedded_model).path), embedded_model.tokenizer, mixed)
    np.testing.assert_allclose(ds.mlp.values[2:], full.mlp.values[2:], rtol=0, atol=32 * EPS * scale)
    # a probability moves by the logit noise relative to itself (as in _close)
    np.testing.assert_allclose(ds.clean_p_base.values, full.clean_p_base.values, rtol=32 * EPS * scale)
    with pytest.raises(UsageError, match="answers none of the 2 pairs correctly"):
        nr.patch(embedded_model, PromptPairs("custom", {}, tuple(wrong)), correct_only=True, **kw)


def test_same_result_pairs_default_to_the_repositorys_same_result_effect(embedded_model):
    same = nr.tasks.arithmetic("same_result", n_prompts=2, seed=0)
    assert nr.patch(embedded_model, same, sites=["mlp"], progress=False).attrs["metric"] == "same_result"
    assert nr.patch(embedded_model, nr.tasks.arithmetic(n_prompts=2), sites=["mlp"],
                    progress=False).attrs["metric"] == "stolfo_ie"


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="attribution", metric="absolute"), "estimates stolfo_ie or logit_diff only"),
    (dict(method="attribution", sites=["embed", "mlp"]), "'embed' is patched exactly only"),
    (dict(metric="bogus"), "unknown metric 'bogus'"),
])
def test_bad_effect_options_are_one_line_errors(embedded_model, pairs, kwargs, message):
    with pytest.raises(UsageError, match=message):
        nr.patch(embedded_model, pairs, **{"sites": ["mlp"], **kwargs}, progress=False)


@pytest.mark.parametrize("model_type", ["gpt2", "gptj", "llama"])
def test_embed_site_on_other_architectures_matches_hooks(tiny_model_dir, model_type):
    """GPT-2 adds position embeddings after the token embedding; patching the first layer's
    input at one position is patching the token embedding there, as the hooks do."""
    path = tiny_model_dir(model_type)
    model = nr.load_model(path)
    pairs = nr.tasks.arithmetic(n_prompts=2, seed=1, tokenizer=model.tokenizer)
    ds = nr.patch(model, pairs, sites=["embed"], positions="all", metric="logit_diff", progress=False)
    hf = _hf(path)
    clean, patched = reference_scores(hf, model.tokenizer, list(pairs), ["embed"], "all")
    scale = logit_scale(hf, model.tokenizer, pairs)
    for (site, i, layer, k), (_, l_star, _, _) in patched.items():
        _close(float(ds.embed.sel(layer=-1).isel(prompt=i, position=k)), _logit_diff(clean[i]["base"][1], l_star),
               scale, f"{model_type} embed pair {i} position {k}")


def test_token_roles_of_arithmetic_prompts():
    from nnsight_reasoning.tasks.arithmetic import token_roles

    assert token_roles("<bos> 3 + 4 = 7 . Q : What is 12 minus 1 ? A :".split() + [""]) == [
        "shots"] * 7 + ["early"] * 4 + ["operand 1", "operator", "operand 2", "late", "late", "last", ""]
    assert token_roles("The sum of twenty-one and six is".split()) == [
        "early", "operator", "early", "operand 1", "middle", "operand 2", "last"]
    # a tokenizer that splits digits (LLaMA's "▁" marks a word start): every digit is the operand
    assert token_roles(["▁", "1", "6", "4", "▁-", "▁", "1", "5", "9", "▁="]) == [
        "early", "operand 1", "operand 1", "operand 1", "operator", "middle", "operand 2", "operand 2", "operand 2",
        "last"]
    # GPT-2's BPE splits number words at the hyphen: the hyphen is part of the number, not a minus
    bpe = ["Ġtwenty", "-", "one", "Ġminus", "Ġsix", "Ġ="]
    assert token_roles(bpe) == ["operand 1", "operand 1", "operand 1", "operator", "operand 2", "last"]
    from nnsight_reasoning.tasks.arithmetic import operator_of
    assert operator_of(bpe) == "-" and operator_of(["Ġtwenty", "-", "one", "Ġplus", "Ġsix", "Ġ="]) == "+"
    assert operator_of("5 - 3 =".split()) == "-"


def test_by_token_role_is_the_mean_over_every_position_of_the_role(embedded_model):
    from nnsight_reasoning.tasks.arithmetic import token_roles

    pairs = nr.tasks.arithmetic("operation", n_prompts=6, seed=2)
    ds = nr.patch(embedded_model, pairs, sites=["embed", "mlp", "head"], positions="all", progress=False)
    roles = nr.by_token_role(ds)
    assert list(roles.role.values) == ["early", "operand 1", "operator", "operand 2", "late", "last"]
    for role in roles.role.values:
        for site in ("mlp", "heads"):
            for layer in range(4):
                vals = [ds[site].sel(layer=layer).values[i, j]
                        for i in range(6) for j, r in enumerate(token_roles(list(ds.token.values[i]))) if r == role]
                want = np.mean(vals, axis=0)  # (heads,) for the head site
                # two float64 means of the same values in another order: n·eps of the largest
                # (a role whose effects cancel to ~1e-13 has no meaningful relative error)
                np.testing.assert_allclose(roles[site].sel(role=role, layer=layer).values, want, rtol=1e-12,
                                           atol=len(vals) * np.finfo(float).eps * np.abs(vals).max())
                assert int(roles.n.sel(role=role)) == len(vals)
    # the operation intervention changes the operator token only: patching any other token's
    # embedding puts the same vector back, so its effect is zero up to float32 noise (patching
    # engine v2 computes the copy in another batch shape than its base row: a few ulps of the
    # logits, the bound of tests/test_patching.py); the operator's effect is large
    assert abs(float(roles.embed.sel(layer=-1, role="operator"))) > 1
    hf = _hf(nr.models.model_info(embedded_model).path)
    noise = 32 * np.finfo(np.float32).eps * logit_scale(hf, embedded_model.tokenizer, pairs)
    assert (abs(roles.embed.sel(layer=-1).drop_sel(role="operator")) < noise).all()


def test_token_roles_of_three_operands_retrieval_and_cloze_prompts():
    """lm-arithmetic's position classes per task (plot-all-tokens.ipynb): three operands' two
    "between" classes, number retrieval's e_q (the thing the question asks about; one token is
    its "1st Tok") and LAMA's subject (one token is its "Last Tok")."""
    from nnsight_reasoning.tasks.arithmetic import token_roles
    from nnsight_reasoning.tasks.recall import fact_roles, retrieval_roles

    assert token_roles("Q : What is 5 + 10 - 5 ? A :".split()) == [
        "early", "early", "early", "early", "operand 1", "operator", "operand 2", "operator", "operand 3", "late",
        "late", "last"]
    assert token_roles("the sum of 2 and 3 and then 4 is".split())[4:9] == [
        "middle", "operand 2", "middle 2", "middle 2", "operand 3"]
    shot = "Q : I have 2 cats and 3 dogs . How many cats do I have ? A : 2 .".split()
    query = "Q : Paul has 1 saw and 4 cars . How many cars does Paul have ? A :".split()
    assert retrieval_roles(["<bos>"] + shot + query + ["", ""]) == (
        ["shots"] * 22 + ["early"] * 12 + ["e_q first"] + ["late"] * 5 + ["last", "", ""])
    assert retrieval_roles(["<bos>"] + query)[:2] == ["early", "early"]  # no exemplars: no shots
    # GPT-2's BPE splits a thing: every piece between "many" and the verb is e_q
    bpe = ["Q", ":", "ĠI", "Ġhave", "Ġ3", "Ġpot", "atoes", "Ġ.", "ĠHow", "Ġmany", "Ġpot", "atoes", "Ġare", "Ġthere",
           "Ġ?", "ĠA", "Ġ:"]
    assert retrieval_roles(bpe)[9:13] == ["early", "e_q first", "e_q last", "late"]
    assert retrieval_roles(bpe[:10] + ["Ġgu", "ine", "as", "Ġdo", "ĠI", "Ġhave"])[10:] == [
        "e_q first", "e_q middle", "e_q last", "late", "late", "last"]
    assert fact_roles("<bos> The capital of Zorvia is".split()) == [
        "early", "early", "early", "early", "subject last", "last"]
    assert fact_roles(["ĠNew", "ĠYork", "Ġis", "Ġthe", "Ġcapital", "Ġof"]) == [
        "subject first", "subject last", "late", "late", "late", "last"]
    assert fact_roles("Ana Maria de Souza was born in".split())[:4] == [
        "subject first", "subject middle", "subject middle", "subject last"]
    with pytest.raises(TaskError, match="matches none of the cloze templates"):
        fact_roles("Zorvia borders".split())
    with pytest.raises(TaskError, match="not a number-retrieval prompt"):
        retrieval_roles("3 + 4 =".split())
    with pytest.raises(TaskError, match="not a number-retrieval prompt"):  # no verb after the thing
        retrieval_roles("Q : How many apples ? A :".split())
    # SentencePiece marks word starts with "▁": a bare "are" inside a word is a piece, not the verb
    sp = ["<s>", "▁Q", "▁:", "▁How", "▁many", "▁squ", "are", "s", "▁are", "▁there", "▁?", "▁A", "▁:", ""]
    assert retrieval_roles(sp) == ["early"] * 5 + ["e_q first", "e_q middle", "e_q last"] + ["late"] * 4 + [
        "last", ""]
    assert fact_roles(["<s>", "▁The", "▁capital", "▁of", "▁Z", "or", "via", "▁is", ""]) == [
        "early"] * 4 + ["subject first", "subject middle", "subject last", "last", ""]


@pytest.mark.parametrize("task", ["number_retrieval", "factual_recall"])
def test_by_token_role_of_retrieval_and_facts_marks_what_the_pair_changes(embedded_model, task):
    """On these pairs base and source differ in one token only (the thing asked about; the
    subject): the role function must put e_q / the subject exactly there, found here by comparing
    the two prompts' tokens; the per-role means are the means over those positions."""
    pairs = nr.tasks.get_task(task).pairs(n_prompts=8, seed=3, tokenizer=embedded_model.tokenizer)
    ds = nr.patch(embedded_model, pairs, sites=["mlp"], positions="all", progress=False)
    roles = nr.by_token_role(ds)
    key = {"number_retrieval": "e_q first", "factual_recall": "subject last"}[task]
    tok = embedded_model.tokenizer
    changed = []
    for i, p in enumerate(pairs):
        b, s = tok(p.base)["input_ids"], tok(p.source)["input_ids"]
        (j,) = [k for k, (x, y) in enumerate(zip(b, s)) if x != y]
        changed.append(ds.mlp.values[i, :, j])
        assert len(b) == int(ds.n_tokens.values[i])
    np.testing.assert_allclose(roles.mlp.sel(role=key).values, np.mean(changed, axis=0), rtol=1e-12, atol=1e-12)
    assert int(roles.n.sel(role=key)) == len(pairs)
    last = [ds.mlp.values[i, :, int(ds.n_tokens.values[i]) - 1] for i in range(len(pairs))]
    np.testing.assert_allclose(roles.mlp.sel(role="last").values, np.mean(last, axis=0), rtol=1e-12, atol=1e-12)
    with pytest.raises(UsageError, match="by_operator splits arithmetic results"):
        nr.by_token_role(ds, by_operator=True)
    ioi = nr.tasks.ioi(2, tokenizer=tok)
    with pytest.raises(UsageError, match="token roles are known for arithmetic, number_retrieval, factual_recall"):
        nr.by_token_role(nr.patch(embedded_model, ioi, sites=["mlp"], positions="all", progress=False))
    last = nr.patch(embedded_model, ioi, sites=["mlp"], progress=False)  # any task's last position: one role
    np.testing.assert_allclose(nr.by_token_role(last).mlp.sel(role="last"), last.mlp.values[:, :, 0].mean(0),
                               rtol=1e-12)


def test_by_token_role_counts_only_the_prompts_with_a_value(embedded_model):
    """correct_only leaves the prompts the model gets wrong NaN: n counts the others, as the means do."""
    pairs = nr.tasks.get_task("number_retrieval").pairs(n_prompts=16, seed=0, n_shots=2,
                                                        tokenizer=embedded_model.tokenizer)
    ds = nr.patch(embedded_model, pairs, sites=["attn", "mlp"], positions="all", correct_only=True, progress=False)
    kept = int(ds.correct.sum())
    assert 0 < kept < 16  # the embedded model learnt zero-shot retrieval only: some pairs fail
    roles = nr.by_token_role(ds)
    assert int(roles.n.sel(role="e_q first")) == int(roles.n.sel(role="last")) == kept
    last = [ds.mlp.values[i, :, int(ds.n_tokens.values[i]) - 1] for i in range(16) if ds.correct.values[i]]
    np.testing.assert_allclose(roles.mlp.sel(role="last").values, np.mean(last, axis=0), rtol=1e-12)


@pytest.mark.parametrize("kind", ["positions", "roles", "prediction"])
def test_patching_figures(embedded_model, tmp_path, kind):
    ds = nr.patch(embedded_model, nr.tasks.arithmetic("operation", n_prompts=4, seed=2),
                  sites=["embed", "attn", "mlp"], positions="all", progress=False)
    nr.plot_result(ds, tmp_path / f"{kind}.png", kind=kind)
    assert (tmp_path / f"{kind}.png").stat().st_size > 10_000
    with pytest.raises(UsageError, match="kind must be one of"):
        nr.plot_result(ds, kind="bogus")
    if kind == "prediction":  # the unit sites' codes are per unit: none of them makes the figure
        heads = nr.patch(embedded_model, nr.tasks.arithmetic("operation", n_prompts=2, seed=2), sites=["attn_pattern"],
                         progress=False)
        with pytest.raises(UsageError, match=r"needs embed, attn_layer_pattern, attn, mlp or resid .*attn_pattern"):
            nr.plot_result(heads, kind="prediction")


def test_neuron_site_matches_hooks_on_every_unit(embedded_model, pairs):
    """Each MLP hidden unit patched alone (the input of the MLP's output projection), batched
    into shared passes; the hooks run one forward per unit."""
    one = PromptPairs("custom", {}, (pairs[0],))
    ds = nr.patch(embedded_model, one, sites=["neuron", "mlp"], layers=[1, 3], metric="logit_diff", progress=False)
    assert ds["neurons"].dims == ("prompt", "layer", "position", "neuron") and ds.sizes["neuron"] == 512
    hf = _hf(nr.models.model_info(embedded_model).path)
    clean, patched = reference_scores(hf, embedded_model.tokenizer, [pairs[0]], ["neuron"], "last", layers=(1, 3))
    scale = logit_scale(hf, embedded_model.tokenizer, one)
    checked = 0
    for (site, i, layer, k, unit), (_, l_star, _, _) in patched.items():
        _close(float(ds.neurons.sel(layer=layer, neuron=unit).isel(prompt=0, position=0)),
               _logit_diff(clean[0]["base"][1], l_star), scale, f"neuron {unit} of layer {layer}")
        checked += 1
    assert checked == 2 * 512 and np.abs(ds.neurons.values).max() > 0.1
    from rich.console import Console

    console = Console(record=True, width=150)
    console.print(nr.experiments.patch.summarize(ds, top=8)[1])
    rows = [line for line in console.export_text().splitlines() if line.startswith("│")]
    assert len(rows) == 8 and sum(" N" in r.split("│")[5] for r in rows) >= 6  # unit N<index>: single neurons


@pytest.mark.parametrize("model_type", ["gpt2", "gptj", "llama"])
def test_neuron_site_on_other_architectures_matches_hooks(tiny_model_dir, model_type):
    path = tiny_model_dir(model_type)
    model = nr.load_model(path)
    pairs = nr.tasks.arithmetic(n_prompts=1, seed=1, tokenizer=model.tokenizer)
    ds = nr.patch(model, pairs, sites=["neuron"], metric="logit_diff", progress=False)
    hf = _hf(path)
    clean, patched = reference_scores(hf, model.tokenizer, list(pairs), ["neuron"], "last")
    scale = logit_scale(hf, model.tokenizer, pairs)
    for (_, i, layer, k, unit), (_, l_star, _, _) in patched.items():
        _close(float(ds.neurons.sel(layer=layer, neuron=unit).isel(prompt=i, position=k)),
               _logit_diff(clean[i]["base"][1], l_star), scale, f"{model_type} neuron {unit} layer {layer}")
    assert len(patched) == ds.neurons.size


@pytest.mark.parametrize("positions", ["last", "all"])
def test_single_dimension_sites_match_hooks_on_every_unit(embedded_model, pairs, positions):
    """lm-arithmetic's single "neurons" (intervention_loc=all: each output dimension of the
    embeddings and of each MLP alone): ``embed_dim`` at layer -1 and ``mlp_dim``, batched into
    shared passes; the hooks run one forward per dimension and position."""
    one = PromptPairs("custom", {}, (pairs[0],))
    layers = [0, 3]
    ds = nr.patch(embedded_model, one, sites=["embed_dim", "mlp_dim"], layers=layers, positions=positions,
                  metric="logit_diff", progress=False)
    d_model = embedded_model.config.hidden_size
    assert ds["mlp_dim"].dims == ("prompt", "layer", "position", "dimension") and ds.sizes["dimension"] == d_model
    assert list(ds.layer.values) == [-1, *layers]
    hf = _hf(nr.models.model_info(embedded_model).path)
    # every unit at the last position; at every position a seeded sample of them, the first and last
    # included (one plain forward per unit and position: all of them would be 4,000 forwards)
    units = None if positions == "last" else \
        sorted({0, d_model - 1, *np.random.default_rng(0).choice(d_model, 14, replace=False).tolist()})
    clean, patched = reference_scores(hf, embedded_model.tokenizer, [pairs[0]], ["embed_dim", "mlp_dim"], positions,
                                      layers=layers, units=units)
    scale = logit_scale(hf, embedded_model.tokenizer, one)
    for (site, i, layer, k, unit), (_, l_star, _, _) in patched.items():
        _close(float(ds[site].sel(layer=layer, dimension=unit).isel(prompt=0, position=k)),
               _logit_diff(clean[0]["base"][1], l_star), scale, f"{site} {unit} of layer {layer} at {k}")
    n_pos = ds.sizes["position"]
    assert len(patched) == (1 + len(layers)) * (d_model if units is None else len(units)) * n_pos
    # the other site's layers hold no value: the embeddings only at -1, the MLPs never there
    assert np.isnan(ds.embed_dim.sel(layer=layers).values).all() and np.isnan(ds.mlp_dim.sel(layer=-1).values).all()
    assert np.abs(ds.mlp_dim.values[np.isfinite(ds.mlp_dim.values)]).max() > 0.1  # some dimension matters
    # ranked together, as the repository's intervention_loc=all ranks its "neurons" (unit_overlap)
    last = ds.sizes["position"] - 1
    cells = {(-1, u): ds.embed_dim.values[0, 0, last, u] for u in range(d_model)}
    cells.update({(layer, u): ds.mlp_dim.values[0, 1 + j, last, u] for j, layer in enumerate(layers)
                  for u in range(d_model)})
    want = sorted(cells, key=lambda c: -cells[c])[:5]
    ov = nr.unit_overlap(ds, top_k=5)
    assert ov.attrs["site"] == "embed_dim+mlp_dim" and ov.attrs["unit"] == "dimension"
    assert list(zip(ov.top_layer.values[0].tolist(), ov.top_unit.values[0].tolist())) == want
    from rich.console import Console  # the summary ranks cells with a value (embed_dim has none at layer 0)

    console = Console(record=True, width=150)
    console.print(nr.experiments.patch.summarize(ds, top=4)[1])
    assert len([line for line in console.export_text().splitlines() if line.startswith("│")]) == 4


@pytest.mark.parametrize("model_type", ["gpt2", "gptj", "llama"])
def test_single_dimension_sites_on_other_architectures_match_hooks(tiny_model_dir, model_type):
    path = tiny_model_dir(model_type)
    model = nr.load_model(path)
    pairs = nr.tasks.arithmetic(n_prompts=1, seed=1, tokenizer=model.tokenizer)
    ds = nr.patch(model, pairs, sites=["embed_dim", "mlp_dim"], metric="logit_diff", progress=False)
    hf = _hf(path)
    clean, patched = reference_scores(hf, model.tokenizer, list(pairs), ["embed_dim", "mlp_dim"], "last")
    scale = logit_scale(hf, model.tokenizer, pairs)
    for (site, i, layer, k, unit), (_, l_star, _, _) in patched.items():
        _close(float(ds[site].sel(layer=layer, dimension=unit).isel(prompt=i, position=k)),
               _logit_diff(clean[i]["base"][1], l_star), scale, f"{model_type} {site} {unit} layer {layer}")
    assert len(patched) == int(np.isfinite(ds.embed_dim).sum() + np.isfinite(ds.mlp_dim).sum())


def _repo_top_units(ds, site, top_k, keep=None):
    """lm-arithmetic's ranking (notebooks_utils.py:301-302, 461), written again in pandas: one
    row per (prompt, layer, unit) at the last token, the mean effect per (layer, unit) over the
    rows, ``sort_values('effect_mean')[-top_k:].index``."""
    import pandas as pd

    da = ds[site].isel(position=0)
    unit = da.dims[-1]
    rows = [(layer, u, float(da.values[i, li, ui])) for i in range(ds.sizes["prompt"]) if keep is None or keep[i]
            for li, layer in enumerate(ds.layer.values) for ui, u in enumerate(ds[unit].values)]
    df = pd.DataFrame(rows, columns=["layer", "neuron", "effect"])
    agg = df.groupby(["layer", "neuron"]).effect.mean().rename("effect_mean").to_frame()
    return agg.sort_values("effect_mean")[-top_k:]


def test_unit_overlap_is_lm_arithmetic_neuron_overlap(embedded_model):
    """The three overlap analyses (compute_neuron_overlap_for_operations, _single and
    compute_neuron_overlap, notebooks_utils.py:452-497) on single MLP output dimensions of
    arithmetic (the four operators, the repository's templates) and number retrieval."""
    ar = nr.patch(embedded_model, nr.tasks.arithmetic(n_prompts=24, seed=0, templates=["stolfo"], operations="+-*/"),
                  sites=["mlp_dim"], progress=False)
    rt = nr.patch(embedded_model, nr.tasks.get_task("number_retrieval").pairs(n_prompts=8, seed=0),
                  sites=["mlp_dim"], progress=False)
    k = 20
    ops = np.array(["+-*/"[(i // 6) % 4] for i in range(24)])  # the repository's loop: 6 templates per operator
    top = {f"arithmetic {o}": _repo_top_units(ar, "mlp_dim", k, ops == o) for o in "+-*/"}
    top["number_retrieval"] = _repo_top_units(rt, "mlp_dim", k)
    top["arithmetic"] = _repo_top_units(ar, "mlp_dim", k)

    def overlap(a, b):  # compute_overlap: |A ∩ B| / len(A)
        return len(set(top[a].index) & set(top[b].index)) / len(top[a].index)

    by_op = nr.unit_overlap(ar, top_k=k, by_operator=True)
    assert sorted(by_op.group.values) == sorted(f"arithmetic {o}" for o in "+-*/")
    assert by_op.n.values.tolist() == [6, 6, 6, 6]
    for g in by_op.group.values:
        for h in by_op.other.values:
            assert float(by_op.overlap.sel(group=g, other=h)) == overlap(g, h), (g, h)
        mine = list(zip(by_op.top_layer.sel(group=g).values.tolist(), by_op.top_unit.sel(group=g).values.tolist()))
        assert mine == list(top[g].index[::-1])  # largest first
        np.testing.assert_allclose(by_op.top_effect.sel(group=g).values, top[g].effect_mean.values[::-1], rtol=1e-12)
    assert 0 < float(by_op.overlap.where(by_op.group != by_op.other).max()) < 1  # neither trivial nor disjoint

    mixed = nr.unit_overlap(rt, ar, top_k=k, by_operator=True)  # number retrieval whole, arithmetic per operator
    for o in "+-*/":
        assert float(mixed.overlap.sel(group="number_retrieval", other=f"arithmetic {o}")) == \
            overlap("number_retrieval", f"arithmetic {o}")
    single = nr.unit_overlap(ar, rt, top_k=k)
    assert float(single.overlap.sel(group="arithmetic", other="number_retrieval")) == \
        overlap("arithmetic", "number_retrieval")
    assert single.attrs["task"] == "arithmetic, number_retrieval" and single.attrs["site"] == "mlp_dim"

    with pytest.raises(UsageError, match="top_k=9999 is more than the 512 mlp_dim units"):
        nr.unit_overlap(ar, top_k=9999)
    with pytest.raises(UsageError, match="patch a unit site"):
        nr.unit_overlap(nr.patch(embedded_model, nr.tasks.arithmetic(n_prompts=2), sites=["mlp"], progress=False))


def test_unit_overlap_refuses_groups_it_cannot_compare(embedded_model):
    """One line saying what to change, never a silent answer: other layers, an empty group (all
    NaN, as correct_only leaves an operator the model fails), a result without the site, no
    operator to split by, a sweep; top_k as numpy's integer."""
    pairs = nr.tasks.arithmetic(n_prompts=8, seed=0, operations="+-*/")
    low = nr.patch(embedded_model, pairs, sites=["mlp_dim"], layers=[0, 1], progress=False)
    high = nr.patch(embedded_model, pairs, sites=["mlp_dim"], layers=[2, 3], progress=False)
    assert nr.unit_overlap(low, low, top_k=np.int64(5)).attrs["top_k"] == 5
    with pytest.raises(UsageError, match=r"covers layers \[2, 3\] .* layers \[0, 1\] and 128: patch the same --layer"):
        nr.unit_overlap(low, high, top_k=5)
    from nnsight_reasoning.tasks.arithmetic import operator_of

    ops = np.array([operator_of(b.split()) for b in low.base.values])
    empty = low.copy()
    empty["mlp_dim"] = low.mlp_dim.where(xr.DataArray(ops != "+", dims="prompt"))
    with pytest.raises(UsageError, match="group 'arithmetic \\+' has no prompt with a value"):
        nr.unit_overlap(empty, top_k=5, by_operator=True)
    with pytest.raises(UsageError, match="top_k=300 is more than the 256 mlp_dim units with a value in group"):
        nr.unit_overlap(low, top_k=300)
    neurons = nr.patch(embedded_model, nr.tasks.arithmetic(n_prompts=1, seed=0), sites=["neuron"], layers=[0],
                       progress=False)
    with pytest.raises(UsageError, match="result 2 has no unit site 'mlp_dim'"):
        nr.unit_overlap(low, neurons, top_k=5)
    with pytest.raises(UsageError, match="result 1: no operator found"):
        nr.unit_overlap(low.assign_coords(base=("prompt", ["no operator here"] * 8)), top_k=5, by_operator=True)
    with pytest.raises(UsageError, match=r"result 1 is a checkpoint sweep: patch one revision \(--revision R\)"):
        nr.unit_overlap(low.expand_dims(checkpoint=["main"]), top_k=5)
    for bad in (0, True, 2.5):
        with pytest.raises(UsageError, match="top_k must be an integer >= 1"):
            nr.unit_overlap(low, top_k=bad)


def test_late_mlp_share_is_the_heatmaps_number(embedded_model):
    """plot-all-tokens.ipynb (JSON lines 212-224): rows = embeddings then MLPs, per position class
    the mean IE, clamped at vmin 0.1 (relative_diff), Σ log(m + 1) over the last token's upper
    half of the rows over the sum over every class and row; computed here from the cells."""
    from nnsight_reasoning.tasks.arithmetic import token_roles

    pairs = nr.tasks.arithmetic(n_prompts=8, seed=0, templates="stolfo", operations="+-*/", n_shots=1)
    ds = nr.patch(embedded_model, pairs, sites=["embed", "mlp"], positions="all", progress=False)
    table = {}  # (role, row) -> the cells' values
    for i in range(ds.sizes["prompt"]):
        tokens = [str(t) for t in ds.token.values[i]]
        for j, role in enumerate(token_roles(tokens)):
            if role in ("", "shots"):
                continue
            table.setdefault((role, 0), []).append(float(ds.embed.values[i, 0, j]))
            for layer in range(4):
                table.setdefault((role, layer + 1), []).append(float(ds.mlp.values[i, 1 + layer, j]))
    logged = {k: np.log(max(np.mean(v), 0.1) + 1) for k, v in table.items()}
    want = sum(logged[("last", r)] for r in range(2, 5)) / sum(logged.values())
    got = nr.late_mlp_share(ds)
    assert got.dims == () and float(got) == pytest.approx(want, rel=1e-12) and 0 < want < 1
    with pytest.raises(UsageError, match="needs a positions='all' result with the mlp site"):
        nr.late_mlp_share(nr.patch(embedded_model, pairs, sites=["mlp"], progress=False))


def test_drop_mult_by_one_is_the_repository_filter(embedded_model):
    """mult_by_1_filter (notebooks_utils.py:286-297): a × pair goes when "1" is one of the base or
    source prompt's words; the operator is known from the repository's loop (pair i: operator
    i // 6 of + - * /), not read from the text."""
    pairs = nr.tasks.arithmetic(n_prompts=96, seed=3, templates=["stolfo"], operations="+-*/")
    ds = nr.patch(embedded_model, pairs, sites=["resid"], layers=[3], metric="logit_diff", progress=False)
    ops = ["+-*/"[(i // 6) % 4] for i in range(96)]
    dropped = [i for i, p in enumerate(pairs) if ops[i] == "*" and ("1" in p.base.split() or "1" in p.source.split())]
    assert len(dropped) >= 2  # the draw holds some
    kept = nr.drop_mult_by_one(ds)
    assert kept.prompt.values.tolist() == [i for i in range(96) if i not in dropped]
    np.testing.assert_array_equal(kept.resid.values, ds.resid.values[[i for i in range(96) if i not in dropped]])
    with pytest.raises(UsageError, match="filters arithmetic results"):
        nr.drop_mult_by_one(ds.assign_attrs(task="number_retrieval"))


def test_cli_patches_lama_facts_and_number_retrieval(tmp_path):
    """lm-arithmetic's intervention types 20 (LAMA) and 11 (number retrieval) from the CLI."""
    from typer.testing import CliRunner

    from nnsight_reasoning.cli.main import app
    from nnsight_reasoning.tasks.recall import FACTS

    lama = tmp_path / "P36.jsonl"
    lama.write_text("".join(json.dumps({"sub_label": s, "obj_label": o, "predicate_id": "P36"}) + "\n"
                            for s, o in FACTS["P36"].items()))
    for task, extra in (("factual", ["--data", str(lama)]), ("number_retrieval", [])):
        out = tmp_path / f"{task}.nc"
        res = CliRunner().invoke(app, ["patch", "--task", task, *extra, "--n-prompts", "8", "--site", "attn",
                                       "--site", "mlp", "--correct-only", "--out", str(out), "--no-progress"])
        assert res.exit_code == 0, res.output
        ds = nr.load_result(out)
        nr.testing.assert_valid_result(ds)
        assert ds.attrs["task"] == {"factual": "factual_recall"}.get(task, task)  # "factual" is an alias
        assert int(ds.correct.sum()) >= 6  # the embedded model knows these
        assert float(ds.total_effect.median()) > 10  # the source prompt moves the answer to r2
    assert json.loads(nr.load_result(tmp_path / "factual.nc").attrs["task_params"])["data"] == str(lama)


@pytest.mark.parametrize("engine", ["v1", "v2"])
def test_whole_pattern_copies_start_where_few_shot_prompts_differ(embedded_model, engine, monkeypatch):
    """Few-shot prompts share their exemplars, and below their first difference the pattern's
    query rows are the same in both runs: a whole-pattern copy starts there, so it holds a few
    tokens, not the prompt, and gives what replacing the whole pattern gives (the wrapped eager
    attention of tests/reference.py), on both engines."""
    from nnsight_reasoning import backend

    tok = embedded_model.tokenizer
    pairs = nr.tasks.arithmetic(n_prompts=2, seed=1, n_shots=2, tokenizer=tok)
    shared = [next(i for i, (x, y) in enumerate(zip(tok(p.base)["input_ids"], tok(p.source)["input_ids"])) if x != y)
              for p in pairs]
    assert min(shared) > 5  # the exemplars
    starts = []
    real = backend.answer_scores
    monkeypatch.setattr(backend, "answer_scores", lambda model, ids, ans, patches=(), **kw: (
        starts.extend((p.site, int(x)) for p in patches for x in p.positions),
        real(model, ids, ans, patches, **kw))[1])
    sites = ["attn_pattern", "attn_layer_pattern"]
    with backend.engine(engine):
        ds = nr.patch(embedded_model, pairs, sites=sites, metric="logit_diff", batch_size=8, progress=False)
    n_layers, n_heads = embedded_model.config.num_hidden_layers, embedded_model.config.num_attention_heads
    assert sorted(starts) == sorted([("attn_pattern", k) for k in shared for _ in range(n_layers * n_heads)]
                                    + [("attn_layer_pattern", k) for k in shared for _ in range(n_layers)])
    hf = _hf(nr.models.model_info(embedded_model).path)
    clean, patched = reference_scores(hf, tok, list(pairs), sites, "last")
    scale = logit_scale(hf, tok, pairs)
    for (site, i, layer, k, *h), (_, l_star, _, _) in patched.items():
        _close(float(ds[site].sel(layer=layer, **({"head": h[0]} if h else {})).isel(prompt=i, position=k)),
               _logit_diff(clean[i]["base"][1], l_star), scale, f"{engine} {site} layer {layer} head {h}")
    assert len(patched) == 2 * (n_layers * n_heads + n_layers)
    assert np.nanmax(np.abs(ds.attn_layer_pattern.values)) > 1e-2  # the patches move the answer
    # the rule: a whole pattern (stored at the last token, 9) starts where the prompts differ and is
    # no patch at all where they do not; other sites patch their own position, none in the shared prefix
    from nnsight_reasoning.experiments.patch import patch_start

    assert [patch_start("attn_pattern", 9, k) for k in (0, 4, 9, 10)] == [0, 4, 9, None]
    assert [patch_start("mlp", 5, k) for k in (0, 5, 6)] == [5, 5, None]


@pytest.mark.parametrize("model_type", ["embedded", "gpt2", "gptj", "llama"])
def test_attention_weight_sites_match_a_wrapped_eager_attention(embedded_model, tiny_model_dir, model_type):
    """One head's attention probabilities taken from the source run, the values staying the
    base run's: at one query position (attn_weights) or at every one (attn_pattern, stored at
    the last); every head's at every query (attn_layer_pattern, stored at the last). The
    reference wraps the model file's eager attention function and recomputes its output from
    the edited probabilities (tests/reference.py)."""
    path = nr.models.model_info(embedded_model).path if model_type == "embedded" else tiny_model_dir(model_type)
    model = embedded_model if model_type == "embedded" else nr.load_model(path)
    pairs = nr.tasks.arithmetic(n_prompts=2, seed=4, tokenizer=model.tokenizer)
    sites = ["attn_pattern", "attn_layer_pattern", "attn_weights"]
    ds = nr.patch(model, pairs, sites=sites, positions="all", metric="logit_diff", progress=False)
    assert ds.attn_weights.dims == ds.attn_pattern.dims == ("prompt", "layer", "position", "head")
    assert ds.attn_layer_pattern.dims == ("prompt", "layer", "position")
    hf = _hf(path)
    clean, patched = reference_scores(hf, model.tokenizer, list(pairs), sites, "all")
    scale = logit_scale(hf, model.tokenizer, pairs)
    for (site, i, layer, k, *h), (_, l_star, _, _) in patched.items():
        _close(float(ds[site].sel(layer=layer, **({"head": h[0]} if h else {})).isel(prompt=i, position=k)),
               _logit_diff(clean[i]["base"][1], l_star), scale, f"{model_type} {site} layer {layer} head {h} query {k}")
    assert sum(int(np.isfinite(ds[s].values).sum()) for s in sites) == len(patched)
    assert np.nanmax(np.abs(ds.attn_weights.values)) > 1e-3  # the tiny models' attention matters too
    # the whole pattern: one value per (layer, head), at each prompt's last token
    last = ds.n_tokens.values - 1
    for i in range(2):
        for site in ("attn_pattern", "attn_layer_pattern"):
            assert np.isfinite(ds[site].values[i, :, last[i]]).all()
            assert np.isnan(np.delete(ds[site].values[i], last[i], axis=1)).all()
    assert np.nanmax(np.abs(ds.attn_layer_pattern.values)) > 1e-3  # the patch moves the answer
    if model_type == "embedded":  # the top-sites table reads a whole-prompt site at each prompt's last token
        from rich.console import Console

        console = Console(record=True, width=200)
        only = ds.drop_vars([v for v in ds.data_vars if v.startswith(("attn_pattern", "attn_weights"))])
        console.print(nr.experiments.patch.summarize(only, top=4)[1])
        rows = [[c.strip() for c in line.split("│")[1:-1]] for line in console.export_text().splitlines()
                if line.startswith("│")]
        assert len(rows) == 4
        code = ds.attn_layer_pattern_prediction.values
        for site, layer, position, _, _, mean, _, moved in rows:
            j = list(ds.layer.values).index(int(layer))
            assert site == "attn_layer_pattern" and position == "last"
            want = np.mean([ds.attn_layer_pattern.values[i, j, last[i]] for i in range(2)])
            np.testing.assert_allclose(float(mean), want, rtol=1e-3)
            assert moved == f"{np.mean([code[i, j, last[i]] == 1 for i in range(2)]):.0%}"


def test_by_token_role_split_by_operator(embedded_model):
    pairs = nr.tasks.arithmetic("operation", n_prompts=12, seed=3, templates=["{expr} ="])
    ds = nr.patch(embedded_model, pairs, sites=["mlp"], positions="all", progress=False)
    split = nr.by_token_role(ds, by_operator=True)
    ops = np.array([p.base.split()[1] for p in pairs])  # "x op y =": the operator from the text
    assert list(split.operator.values) == sorted(set(ops))
    for op in split.operator.values:
        alone = nr.by_token_role(ds.isel(prompt=np.flatnonzero(ops == op)))
        got = split.mlp.sel(operator=op).sel(role=alone.role.values)
        np.testing.assert_allclose(got.values, alone.mlp.values, rtol=1e-12)
        assert split.n.sel(operator=op).sel(role=alone.role.values).values.tolist() == alone.n.values.tolist()


def test_last_position_results_split_by_operator_as_the_repository_splits_them(embedded_model):
    """notebooks_utils.py:307-321: last-token results averaged per operator. With lm-arithmetic's
    templates pair i's operator is the (i // 6)-th in turn, known here without reading any text."""
    pairs = nr.tasks.arithmetic("operands", n_prompts=48, seed=1, templates="stolfo", operations="+-*/")
    ds = nr.patch(embedded_model, pairs, sites=["attn", "mlp"], progress=False)
    split = nr.by_token_role(ds, by_operator=True)
    ops = np.array(["+-*/"[(i // 6) % 4] for i in range(48)])
    assert list(split.operator.values) == sorted("+-*/") and list(split.role.values) == ["last"]
    for op in "+-*/":
        for site in ("attn", "mlp"):
            want = ds[site].values[ops == op, :, 0].mean(0)
            np.testing.assert_allclose(split[site].sel(operator=op, role="last").values, want, rtol=1e-12)
        assert int(split.n.sel(operator=op, role="last")) == 12
    np.testing.assert_allclose(nr.by_token_role(ds).mlp.sel(role="last").values, ds.mlp.values[:, :, 0].mean(0),
                               rtol=1e-12)
    with pytest.raises(UsageError, match="holds the last position only"):
        nr.by_token_role(ds, roles=lambda tokens: ["x"] * len(tokens))


@pytest.mark.parametrize("metric", ["stolfo_ie", "absolute", "same_result", "relative_source_increase"])
def test_effects_on_a_tiny_model_match_hooks(tiny_model_dir, metric):
    """The same effect formulas on a tiny random GPT-2, whose probabilities are far from the
    embedded model's (no answer is likely), site by site against the hooks."""
    path = tiny_model_dir("gpt2")
    model = nr.load_model(path)
    pairs = nr.tasks.arithmetic(n_prompts=2, seed=2, tokenizer=model.tokenizer)
    ds = nr.patch(model, pairs, sites=["attn", "mlp"], metric=metric, progress=False)
    hf = _hf(path)
    clean, patched = reference_scores(hf, model.tokenizer, list(pairs), ["attn", "mlp"], "last")
    scale = logit_scale(hf, model.tokenizer, pairs)
    for i, c in enumerate(clean):
        (pb, _, _, _), (ps, _, _, _) = c["base"], c["source"]
        _close(float(ds.total_effect[i]), _repo_effects(pb[0], pb[1], ps[0], ps[1])[metric], scale, f"TE {i}",
               metric, pb, ps)
    for (site, i, layer, k), (p_star, _, _, _) in patched.items():
        pb = clean[i]["base"][0]
        _close(float(ds[site].sel(layer=layer).isel(prompt=i, position=k)),
               _repo_effects(pb[0], pb[1], p_star[0], p_star[1])[metric], scale, f"{site} {layer} pair {i}",
               metric, pb, p_star)
