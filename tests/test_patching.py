"""Activation patching: exact agreement with plain PyTorch hooks, plus invariants."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import nnsight_reasoning as nr
from nnsight_reasoning.sites import var_name
from nnsight_reasoning.tasks import PromptPair, PromptPairs

from .reference import last_scores, logit_scale as _logit_scale, reference_patch

SITES = ["head", "attn", "mlp", "resid"]


def _hf(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()


def _compare(ds, ref, metric, logit_scale):
    # The toolkit runs batched, the reference one sequence at a time: other reduction orders,
    # so each float32 logit may differ by a few ulps of the largest logit (measured: up to ~8).
    # logit_diff is four logits: |error| <= 4 · 8 ulps. stolfo_ie is a ratio of probabilities,
    # whose relative error is the error of two log-probabilities (logit and logsumexp each):
    # |error| / max(1, |value|) <= 4 · 8 ulps as well (the scale 1 covers effects near 0, where
    # the two terms cancel). Real bugs (a wrong row, site or position) show up as O(1) errors.
    tol = 32 * np.finfo(np.float32).eps * max(1.0, logit_scale)
    for site, want in ref.items():
        got = ds[var_name(site)].values
        assert got.shape == want.shape, site
        assert np.array_equal(np.isnan(got), np.isnan(want)), site
        m = ~np.isnan(want)
        scale = np.maximum(1.0, np.abs(want[m]))
        err = np.max(np.abs(got[m] - want[m]) / scale)
        assert err < tol, f"{site} ({metric}): max relative error {err:.2e} (float32 bound {tol:.2e})"


@pytest.mark.parametrize("metric", ["stolfo_ie", "logit_diff"])
@pytest.mark.parametrize("positions", ["last", "all"])
def test_embedded_matches_hooks(embedded_model, small_pairs, metric, positions):
    ds = nr.patch(embedded_model, small_pairs, sites=SITES, positions=positions, metric=metric,
                  batch_size=64, progress=False)
    hf = _hf(nr.models.model_info(embedded_model).path)
    ref = reference_patch(hf, embedded_model.tokenizer, list(small_pairs), SITES, positions, metric,
                          embedded_model.config.num_attention_heads)
    _compare(ds, ref, metric, _logit_scale(hf, embedded_model.tokenizer, small_pairs))
    # clean probabilities are an independent plain forward too
    for i, pair in enumerate(small_pairs):
        tok = embedded_model.tokenizer
        ans = [tok(" " + a, add_special_tokens=False)["input_ids"][0] for a in (pair.base_answer, pair.source_answer)]
        p, _ = last_scores(hf, tok(pair.base)["input_ids"], ans)
        np.testing.assert_allclose([ds.clean_p_base[i], ds.clean_p_source[i]], p, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("model_type", ["gpt2", "gptj", "llama", "gpt_neox"])
def test_other_architectures_match_hooks(tiny_model_dir, embedded_tokenizer, model_type):
    path = tiny_model_dir(model_type)
    model = nr.load_model(path)
    pairs = nr.tasks.arithmetic(n_prompts=3, seed=1, tokenizer=model.tokenizer)
    ds = nr.patch(model, pairs, sites=SITES, positions="all", metric="logit_diff", batch_size=40, progress=False)
    hf = _hf(path)
    ref = reference_patch(hf, model.tokenizer, list(pairs), SITES, "all", "logit_diff",
                          model.config.num_attention_heads)
    _compare(ds, ref, "logit_diff", _logit_scale(hf, model.tokenizer, pairs))
    assert np.nanmax(np.abs(ds.resid.values)) > 1e-3  # the tiny model is not trivially inert


def test_batch_size_does_not_change_numbers(embedded_model, small_pairs):
    # Compared in logit space: stolfo_ie divides by probabilities down to ~1e-17 on this model,
    # so float32 batch noise of a few ulps becomes relative errors no tolerance can bound.
    # A logit difference is four float32 logits; this model's logits reach |30|, and a
    # different batch shape changes the reduction order of every layer, moving each logit by up
    # to ~8 ulps (measured: 2.7e-5 on one value of 264). 4 logits x 8 ulps x eps32 x 30 =
    # 1.1e-4 bounds it (the same bound as _compare); any real mix-up of rows or sites is O(1).
    kw = dict(sites=["mlp", "resid"], positions="all", metric="logit_diff", progress=False)
    a = nr.patch(embedded_model, small_pairs, batch_size=3, **kw)
    b = nr.patch(embedded_model, small_pairs, batch_size=1000, **kw)
    assert a.attrs["n_forward_passes"] > b.attrs["n_forward_passes"]
    for v in ("mlp", "resid"):
        np.testing.assert_allclose(a[v].values, b[v].values, rtol=0, atol=32 * np.finfo(np.float32).eps * 30)
    np.testing.assert_allclose(a["clean_p_base"].values, b["clean_p_base"].values, rtol=1e-5, atol=1e-7)


def test_identical_prompts_have_zero_effect(embedded_model):
    pairs = PromptPairs("custom", {}, (PromptPair("12 + 7 =", "12 + 7 =", "19", "19"),
                                       PromptPair("The result of 3 - 1 is", "The result of 3 - 1 is", "2", "2")))
    ds = nr.patch(embedded_model, pairs, sites=SITES, positions="all", progress=False)
    for v in ("heads", "attn", "mlp", "resid"):
        vals = ds[v].values[~np.isnan(ds[v].values)]
        assert vals.size and np.all(np.abs(vals) < 1e-6), v


def test_patching_final_residual_gives_the_source_run(embedded_model, small_pairs):
    """The last layer's residual at the last position determines the output: patching it
    turns the base run into the source run (TransformerLens' restoration property)."""
    ds = nr.patch(embedded_model, small_pairs, sites=["resid"], metric="logit_diff", progress=False)
    hf = _hf(nr.models.model_info(embedded_model).path)
    tok = embedded_model.tokenizer
    for i, pair in enumerate(small_pairs):
        ans = [tok(" " + a, add_special_tokens=False)["input_ids"][0] for a in (pair.base_answer, pair.source_answer)]
        _, lb = last_scores(hf, tok(pair.base)["input_ids"], ans)
        _, ls = last_scores(hf, tok(pair.source)["input_ids"], ans)
        want = (ls[1] - ls[0]) - (lb[1] - lb[0])
        assert ds.resid.isel(prompt=i, layer=-1, position=0).item() == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_trained_model_localises_the_result(embedded_model):
    """On the trained model, operand patches at the last position move the answer:
    the final residual carries essentially the whole effect, layer 0's MLP (which in the
    parallel-residual GPT-NeoX only sees the '=' token itself) carries none."""
    pairs = nr.tasks.arithmetic(n_prompts=16, seed=0)
    ds = nr.patch(embedded_model, pairs, sites=["mlp", "resid"], metric="logit_diff", progress=False)
    final = ds.resid.isel(layer=-1, position=0)
    assert float(final.mean()) > 1.0
    assert float(np.abs(ds.mlp.isel(layer=0, position=0)).max()) < 1e-5


def test_remote_local_path_matches_local(embedded_model, small_pairs):
    """nnsight's remote serialisation path (run on this machine) gives the same numbers."""
    a = nr.patch(embedded_model, small_pairs, sites=["attn"], progress=False)
    b = nr.patch(embedded_model, small_pairs, sites=["attn"], progress=False, remote="local")
    np.testing.assert_allclose(a.attn.values, b.attn.values, rtol=1e-6)
    assert b.attrs["remote"] == 1


@pytest.mark.parametrize("kwargs,match", [
    ({"sites": ["mlp", "banana"]}, "unknown site"),
    ({"positions": "first"}, "positions must be"),
    ({"metric": "kl"}, "unknown metric"),
    ({"layers": [0, 9]}, "layer 9 is out of range"),
])
def test_bad_arguments(embedded_model, small_pairs, kwargs, match):
    with pytest.raises(nr.UsageError, match=match):
        nr.patch(embedded_model, small_pairs, progress=False, **kwargs)


def test_misaligned_and_multitoken_pairs_are_refused(embedded_model):
    bad_len = PromptPairs("custom", {}, (PromptPair("12 + 7 =", "The result of 1 + 2 is", "19", "3"),))
    with pytest.raises(nr.UsageError, match="misaligned"):
        nr.patch(embedded_model, bad_len, progress=False)
    bad_ans = PromptPairs("custom", {}, (PromptPair("90 + 70 =", "12 + 7 =", "160", "19"),))
    with pytest.raises(nr.UsageError, match="not a single token"):
        nr.patch(embedded_model, bad_ans, progress=False)


def test_remote_without_a_key_is_a_clear_error(embedded_model, small_pairs, monkeypatch):
    import nnsight

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", None)
    with pytest.raises(nr.RunError, match="no NDIF API key: set NDIF_API_KEY"):
        nr.patch(embedded_model, small_pairs, remote=True, progress=False)


def test_backend_copies_join_at_their_layer_and_come_back_in_patch_order(embedded_model):
    """The backend's contract, one copy at a time against hooks: copies listed out of forward
    order, two patches on one module, every site kind, with and without answer ranks."""
    from nnsight_reasoning.backend import Patch, answer_scores

    from .reference import capture

    tok = embedded_model.tokenizer
    src, base = tok("9 + 17 =")["input_ids"], tok("13 + 14 =")["input_ids"]
    answers = [tok(" " + a, add_special_tokens=False)["input_ids"][0] for a in ("27", "26")]
    one = torch.tensor
    patches = [Patch("resid", 3, one([1]), one([0]), one([2])),
               Patch("mlp", 0, one([1, 0]), one([0, 1]), one([1, 3])),  # a copy of the source row too
               Patch("head", 1, one([1]), one([0]), one([4]), one([2])),
               Patch("attn", 1, one([1]), one([0]), one([0])),
               Patch("mlp", 0, one([1]), one([0]), one([4]))]
    ids = one([src, base])
    s = answer_scores(embedded_model, ids, one([answers, answers]), patches, rank=False)
    assert s.rank is None and s.log_probs.shape == (2 + 6, 2)
    hf = _hf(nr.models.model_info(embedded_model).path)
    want = [last_scores(hf, src, answers)[0], last_scores(hf, base, answers)[0]]
    for p in patches:
        for row, src_row, pos, k in zip(p.rows.tolist(), p.src_rows.tolist(), p.positions.tolist(), range(len(p.rows))):
            act = capture(hf, ids[src_row].tolist(), p.site, p.layer)
            head = None if p.heads is None else int(p.heads[k])
            value = act[pos] if head is None else act[pos, head]
            want.append(last_scores(hf, ids[row].tolist(), answers, p.site, p.layer, pos, value, head)[0])
    # a probability moves by the float32 noise of the logits relative to itself: 32 ulps of the
    # largest logit of these rows (as tests/test_effects.py bounds it)
    with torch.no_grad():
        scale = max(float(hf(torch.tensor([r])).logits.abs().max()) for r in (src, base))
    rtol = 32 * float(np.finfo(np.float32).eps) * max(1.0, scale)
    np.testing.assert_allclose(s.log_probs.exp().numpy(), np.array(want), rtol=rtol, atol=1e-9)
    ranked = answer_scores(embedded_model, ids, one([answers, answers]), patches)
    np.testing.assert_array_equal(ranked.log_probs.numpy(), s.log_probs.numpy())
    with torch.no_grad():
        full = torch.softmax(hf(ids).logits[:, -1].double(), -1)
    for r in range(2):  # rank = how many tokens are more likely than the better of the answers
        assert int(ranked.rank[r]) == min(int((full[r] > full[r, a]).sum()) for a in answers)
    # best_of marks each input row's candidates, and a copy ranks its origin's: input row 0 the
    # first answer, row 1 the second; each copy's rank is then its origin's column's own
    origin = torch.cat([one([0, 1])] + [p.rows for p in patches])
    from nnsight_reasoning import backend

    for engine in ("v1", "v2"):
        with backend.engine(engine):
            by_column = [answer_scores(embedded_model, ids, one([answers, answers]), patches,
                                       best_of=one([[c == 0, c == 1]] * 2)).rank for c in (0, 1)]
            mixed = answer_scores(embedded_model, ids, one([answers, answers]), patches,
                                  best_of=one([[True, False], [False, True]])).rank
            both = answer_scores(embedded_model, ids, one([answers, answers]), patches).rank
        assert torch.equal(mixed, torch.where(origin == 0, by_column[0], by_column[1])), engine
        assert torch.equal(torch.minimum(*by_column), both), engine  # unmarked: the best of all
        assert not torch.equal(by_column[0], by_column[1])  # the columns rank apart
    # a whole pattern starts at a query above which the row and its source agree, or it is refused
    # (Patch.positions' old meaning, the last token, would silently patch one query's weights)
    for site, heads in (("attn_pattern", one([1])), ("attn_layer_pattern", None)):
        ok = answer_scores(embedded_model, ids, one([answers, answers]), [Patch(site, 1, one([1]), one([0]), one([0]),
                                                                                heads)])
        assert ok.log_probs.shape == (3, 2)
        for start in (len(base) - 1, len(base), -1):
            with pytest.raises(ValueError, match=f"a {site} patch starts at query p"):
                answer_scores(embedded_model, ids, one([answers, answers]),
                              [Patch(site, 1, one([1]), one([0]), one([start]), heads)])


def test_patches_inside_the_shared_prefix_cost_no_forward_and_match_hooks(embedded_model, monkeypatch):
    """Few-shot prompts share their exemplars: below the first token where base and source
    differ, the source run's activations are the base run's, so those patches change nothing.
    The sweep computes no copy for them (their value is the clean effect, 0 in logit_diff), and
    every value, computed or not, matches patching by plain hooks."""
    from nnsight_reasoning import backend

    tok = embedded_model.tokenizer
    pairs = nr.tasks.arithmetic(n_prompts=2, seed=0, n_shots=2, tokenizer=tok)
    sites = ["attn", "mlp"]
    copies = []
    real = backend.answer_scores
    monkeypatch.setattr(backend, "answer_scores", lambda model, ids, ans, patches=(), **kw: (
        copies.append(sum(len(p.rows) for p in patches)), real(model, ids, ans, patches, **kw))[1])
    ds = nr.patch(embedded_model, pairs, sites=sites, positions="all", metric="logit_diff", progress=False)
    shared = []
    for p in pairs:
        b, s = tok(p.base)["input_ids"], tok(p.source)["input_ids"]
        shared.append(next(i for i, (x, y) in enumerate(zip(b, s)) if x != y))
    lengths = ds.n_tokens.values
    assert min(shared) > 5  # the exemplars: most of each prompt
    assert sum(copies) == sum(len(sites) * 4 * (int(t) - k) for t, k in zip(lengths, shared))
    for i, k in enumerate(shared):
        for site in sites:
            assert (ds[site].values[i, :, :k] == 0).all()
            assert (ds[f"{site}_prediction"].values[i, :, :k] == 0).all()
    hf = _hf(nr.models.model_info(embedded_model).path)
    ref = reference_patch(hf, tok, list(pairs), sites, "all", "logit_diff", embedded_model.config.num_attention_heads)
    _compare(ds, ref, "logit_diff", _logit_scale(hf, tok, pairs))


def test_llama_style_digits_are_scored_after_a_space_token(tmp_path):
    """A tokenizer that writes the space before a digit as a token of its own (LLaMA's
    SentencePiece: " 5" is "▁", "5"): every prompt ends with the space token and the answer is
    the digit after it, as lm-arithmetic scores LLaMA (interventions/__init__.py:54-61).
    Patching and evaluate against plain hooks on ids built here: the prompt's tokens, the "▁"
    of "x " at the end, the digit of "x 5" as the answer."""
    from .conftest import tiny_sentencepiece_llama
    from .reference import capture

    corpus = [f"{e.prompt} {e.answer}" for e in nr.tasks.examples("arithmetic", 300, max_n=9)]
    path = tiny_sentencepiece_llama(tmp_path / "sp", corpus)
    model = nr.load_model(path)
    tok = model.tokenizer
    assert tok.convert_ids_to_tokens(tok("= 5", add_special_tokens=False)["input_ids"])[-2:] == ["▁", "5"]
    space = tok("x ", add_special_tokens=False)["input_ids"][-1]
    digit = {str(d): tok(f"x {d}", add_special_tokens=False)["input_ids"][-1] for d in range(10)}
    pairs = nr.tasks.arithmetic(n_prompts=4, seed=1, max_n=9, tokenizer=tok)
    ds = nr.patch(model, pairs, sites=["attn", "mlp"], metric="logit_diff", progress=False)
    hf = _hf(path)
    scale = _logit_scale(hf, tok, pairs) + 1.0
    for i, p in enumerate(pairs):
        b, s = tok(p.base)["input_ids"] + [space], tok(p.source)["input_ids"] + [space]
        assert ds.token.values[i, 0] == "▁"  # the last position is the space token
        ans = [digit[p.base_answer], digit[p.source_answer]]
        _, lg = last_scores(hf, b, ans)
        for site in ("attn", "mlp"):
            for layer in range(2):
                _, ls = last_scores(hf, b, ans, site, layer, len(b) - 1, capture(hf, s, site, layer)[len(s) - 1])
                want = (ls[1] - ls[0]) - (lg[1] - lg[0])
                got = float(ds[site].sel(layer=layer).isel(prompt=i, position=0))
                assert abs(got - want) < 32 * np.finfo(np.float32).eps * scale, (site, layer, got, want)
    assert np.abs(ds.mlp.values).max() > 1e-3  # the patches move something
    circuit = nr.circuit(model, pairs, ig_steps=1, sizes=(5,), progress=False)  # the circuit's answers and prompts
    np.testing.assert_allclose(circuit.clean_logit_diff.values, [
        float(np.subtract(*last_scores(hf, tok(p.base)["input_ids"] + [space],
                                        [digit[p.base_answer], digit[p.source_answer]])[1])) for p in pairs], atol=1e-4)
    ev = nr.evaluate(model, nr.tasks.examples("arithmetic", 6, max_n=9, max_result=9), progress=False)
    for i in range(6):
        ids = tok(str(ev.text.values[i]))["input_ids"] + [space]
        with torch.no_grad():
            probs = torch.softmax(hf(torch.tensor([ids])).logits[0, -1].double(), -1)
        assert ev.p_answer.values[i] == pytest.approx(float(probs[digit[str(ev.answer.values[i])]]), rel=1e-5, abs=1e-8)


def test_the_summary_names_the_last_token_as_such(embedded_model):
    """positions="last" over prompts of one length holds position T-1: the table says "4 (last)",
    not a bare 4 that reads like a chosen position; positions="all" gives bare positions."""
    from nnsight_reasoning.experiments.patch import summarize

    pairs = nr.tasks.arithmetic(n_prompts=4, seed=0, templates=["{expr} ="])
    last = nr.patch(embedded_model, pairs, sites=["mlp"], progress=False)
    t = int(last["position"].values[0])
    assert set(summarize(last)[1].columns[2].cells) == {f"{t} (last)"}
    every = nr.patch(embedded_model, pairs, sites=["mlp"], positions="all", progress=False)
    assert all(c.isdigit() for c in summarize(every)[1].columns[2].cells)
