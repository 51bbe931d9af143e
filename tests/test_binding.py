"""Binding-ID experiments (Feng & Steinhardt 2024) against plain PyTorch hooks on tiny models:
separate donor and clean runs, hooks that overwrite the embeddings and every layer output
at one position, HF's own ``position_ids``; the data generator, the batching, sweeps and the
``binding`` CLI."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

import nnsight_reasoning as nr
from nnsight_reasoning import embedded
from nnsight_reasoning.cli.main import app
from nnsight_reasoning.errors import UsageError
from nnsight_reasoning.experiments.binding import TOKENS, locate


def _positions(model, ctx, text):
    loc = locate(model, ctx, text)
    return loc.ids, loc.entities, loc.attributes


def _window(first, kind, tokens=TOKENS):
    """The positions binding-iclr's tests edit for a word whose first token is ``first``:
    ``entity_width`` (kind 0) or ``country_width`` (kind 1) tokens from it."""
    return range(first, first + tokens[kind])


def _vectors(ds, name, L):
    """A Dataset's per-token vectors (…, token, depth, d) cut to the L layer inputs, with the
    entries of tokens outside a kind's window (NaN in the file) as 0, as the edits use them."""
    v = ds[name]
    edited = (ds["token"] < ds["edited_tokens"]).transpose("kind", "token")
    nan = np.isnan(v.values).all(axis=(-1, -2))  # (kind, [k,] token)
    assert (nan == ~np.broadcast_to(edited.values.reshape(edited.shape[:1] + (1,) * (nan.ndim - 2) + edited.shape[1:]),
                                    nan.shape)).all()
    return torch.tensor(np.nan_to_num(v.values), dtype=torch.float64)[..., :L, :]


def _depth_modules(hf):
    if hf.config.model_type == "gpt2":
        return [hf.transformer.wte] + list(hf.transformer.h)
    return [hf.model.embed_tokens] + list(hf.model.layers)


def _first(o):
    return o[0] if isinstance(o, tuple) else o


def _run(hf, ids, edits=None, position_ids=None, capture=()):
    """Logits at the last position; residuals (depth, len(capture), d) at ``capture``;
    ``edits`` {position: (depth, d) values} overwrite the residual there at every depth."""
    got, hooks = [], []
    for depth, mod in enumerate(_depth_modules(hf)):
        def hook(m, i, o, depth=depth):
            x = _first(o)
            if edits:
                x = x.clone()
                for pos, vals in edits.items():
                    x[0, pos] = vals[depth].to(x.dtype)
            got.append(x[0, list(capture)].detach().double())
            return ((x,) + tuple(o[1:])) if isinstance(o, tuple) else x
        hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            kw = {} if position_ids is None else {"position_ids": torch.tensor([position_ids])}
            logits = hf(torch.tensor([ids]), **kw).logits[0, -1]
    finally:
        for h in hooks:
            h.remove()
    return logits, torch.stack(got)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def tiny(request, tiny_model_dir):
    path = tiny_model_dir(request.param)
    return nr.load_model(str(path)), AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()


def test_binding_contexts_are_seeded_draws():
    data = nr.tasks.binding_contexts(6, 3, 5, seed=3)
    assert data.task == "binding" and data.params == {"n_contexts": 6, "n_pairs": 3, "n_estimate": 5, "seed": 3}
    assert list(data) == nr.tasks.sample_contexts(6, 3, 3) and list(data.estimate) == nr.tasks.sample_contexts(5, 3, 4)
    assert data.n_pairs == 3 and data.seed == 3 and len(data) == 6 and data == nr.tasks.binding_contexts(6, 3, 5, 3)
    with pytest.raises(UsageError, match="at least 2 pairs"):
        nr.tasks.binding_contexts(4, n_pairs=1)
    with pytest.raises(UsageError, match="n_estimate must be"):
        nr.tasks.binding_contexts(2, n_estimate=0)


def test_binding_matches_hooks(tiny):
    model, hf = tiny
    data = nr.tasks.binding_contexts(6, 2, 5, seed=3)
    ds = nr.binding(model, data, batch_size=4, progress=False)
    nr.testing.assert_valid_result(ds)
    # 12 queries, 2 per pass (each query takes 2 rows): 6 passes of 2 + 2 + 4 traces; the vectors: 5 contexts, 4 a pass
    assert ds.attrs["n_forward_passes"] == 6 * 8 + 2 and ds.attrs["seed"] == 3
    contexts = list(data)
    donors = contexts[1:] + contexts[:1]
    tok = model.tokenizer

    def cand(c, d, k):
        return [tok(" " + a, add_special_tokens=False)["input_ids"][0] for a in list(c.attributes) + [d.attributes[k]]]

    # binding-ID vectors from separate clean runs of the estimate contexts (seed + 1)
    diffs = []
    for c in data.estimate:
        ids, e, a = _positions(model, c, c.text(0))
        _, h = _run(hf, ids, capture=(e[0], e[1], a[0], a[1]))
        diffs.append(torch.stack([h[:, 1] - h[:, 0], h[:, 3] - h[:, 2]]))
    delta = torch.stack(diffs).mean(0)  # (2, depth, d)
    np.testing.assert_allclose(ds["delta_norm"].values, delta.norm(dim=-1).numpy(), rtol=1e-4)
    for ci, (c, d) in enumerate(zip(contexts, donors)):
        for k in range(2):
            ids, e, a = _positions(model, c, c.text(k))
            cd = cand(c, d, k)
            logits, clean = _run(hf, ids, capture=(e[0], e[1], a[0], a[1]))
            assert ds["correct"].values[ci, k] == int(logits[cd].argmax() == k)
            span = e[1] - e[0]
            perm = list(range(len(ids)))
            perm[e[0]:e[0] + span], perm[e[1]:e[1] + span] = perm[e[1]:e[1] + span], perm[e[0]:e[0] + span]
            assert ds["position_correct"].values[ci, k] == int(_run(hf, ids, position_ids=perm)[0][cd].argmax() == k)
            # factorizability: the donor's activations at entity k (query names the donor's entity) / attribute k
            d_ids = _positions(model, d, d.text(k))[0]
            for t, (pos, own, expect) in enumerate(((e[k], _positions(model, c, c.text(k, entity=d.entities[k]))[0], k),
                                                    (a[k], ids, 2))):
                _, donor = _run(hf, d_ids, capture=(pos,))
                got = int(_run(hf, own, edits={pos: donor[:, 0]})[0][cd].argmax() == expect)
                valid = (d.entities[k] not in c.entities, d.attributes[k] not in c.attributes)[t]
                want = ds["factor_correct"].values[t, ci, k]
                assert (np.isnan(want) and not valid) or want == got
            # mean interventions: clean value ± Δ at the pair-0 / pair-1 tokens, every depth
            for t, (p0, p1) in enumerate(((0, 1), (2, 3))):
                pos = (e, e) if t == 0 else (a, a)
                edits = {pos[0][0]: clean[:, p0] + delta[t], pos[1][1]: clean[:, p1] - delta[t]}
                swapped = int(_run(hf, ids, edits=edits)[0][cd].argmax() == 1 - k)
                assert ds["swap"].values[t, 0, ci, k] == swapped
    assert ds["accuracy"] == ds["correct"].mean() and 0 <= float(ds["swap_accuracy"].max()) <= 1


def test_binding_on_the_embedded_model_and_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["binding", "--n-contexts", "40", "--n-estimate", "40", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "swap" in res.output and "chance 0.50" in res.output
    path = tmp_path / "results" / "binding_2pairs_embedded_main.nc"
    ds = nr.load_result(path)
    nr.testing.assert_valid_result(ds)
    assert not (tmp_path / "results" / "binding_2pairs_embedded_main.nc.parts").exists()
    res = CliRunner().invoke(app, ["show", str(path)])
    assert res.exit_code == 0 and "factorizability: entity substituted" in res.output
    # Clean accuracy (the right city's logit tops the context's cities) is at least the card's
    # top-1 accuracy over the whole vocabulary, less the sampling error of 80 queries.
    card = embedded.card()["accuracy"]["main"]["binding_cities"]
    assert float(ds["accuracy"]) >= card - 0.12 and ds.sizes["prompt"] == 40
    res = CliRunner().invoke(app, ["plot", str(path)])
    assert res.exit_code == 0 and (tmp_path / "results" / "binding_2pairs_embedded_main.png").stat().st_size > 5000
    res = CliRunner().invoke(app, ["binding", "--n-pairs", "1", "--no-progress", "--out", str(tmp_path / "x.nc")])
    assert res.exit_code == 2 and "at least 2 pairs" in res.output and not (tmp_path / "x.nc").exists()


def test_binding_bad_input(embedded_model):
    with pytest.raises(UsageError, match=r"takes BindingContexts or McqContexts, from nr.tasks.binding_contexts\(n_contexts, "
                                         r"n_pairs, n_estimate, seed\) or nr.tasks.mcq_contexts.*\(got a list of BindingContext\)"):
        nr.binding(embedded_model, nr.tasks.sample_contexts(2), progress=False)


def test_binding_sweeps_checkpoints_and_resumes(embedded_model, tmp_path, monkeypatch):
    """--revisions stacks per checkpoint; the main checkpoint equals a plain run; a rerun of a
    finished-but-unwritten sweep reads it back; the summary has one column per checkpoint."""
    monkeypatch.chdir(tmp_path)
    data = nr.tasks.binding_contexts(6, 2, 6, seed=1)
    single = nr.binding(embedded_model, data, batch_size=8, progress=False)
    sweep = nr.binding("embedded", data, batch_size=8, revisions="step0,main", resume_dir=tmp_path / "parts",
                       progress=False)
    nr.testing.assert_valid_result(sweep)
    assert list(sweep["checkpoint"].values) == ["step0", "main"] and sweep["swap"].dims[0] == "checkpoint"
    for v in ("correct", "factor_correct", "position_correct", "swap", "delta_norm"):
        np.testing.assert_array_equal(sweep[v].sel(checkpoint="main").values, single[v].values)
    again = nr.binding("embedded", data, batch_size=8, revisions="step0,main", resume_dir=tmp_path / "parts",
                       progress=False)
    assert again.attrs["n_resumed_revisions"] == 2
    np.testing.assert_array_equal(again["swap"].values, sweep["swap"].values)
    res = CliRunner().invoke(app, ["binding", "--n-contexts", "6", "--n-estimate", "6", "--seed", "1", "--batch-size",
                                   "8", "--revisions", "step0,main", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "2 checkpoints" in res.output and "step0" in res.output and "main" in res.output
    path = tmp_path / "results" / "binding_2pairs_embedded_step0-main.nc"
    np.testing.assert_array_equal(nr.load_result(path)["swap"].values, sweep["swap"].values)
    res = CliRunner().invoke(app, ["plot", str(path)])
    assert res.exit_code == 0 and path.with_suffix(".png").stat().st_size > 5000


def test_residual_edits_and_reads_match_hooks(tiny):
    """The backend traces themselves, on logits (argmax comparisons above can hide small errors)."""
    from nnsight_reasoning.backend import resid

    model, hf = tiny
    c, d = nr.tasks.binding_contexts(2, 2, 7)
    ids, e, a = _positions(model, c, c.text(0))
    d_ids = _positions(model, d, d.text(0))[0]
    n_depth = hf.config.num_hidden_layers + 1
    add = torch.randn(n_depth, 2, hf.config.hidden_size, generator=torch.Generator().manual_seed(0))
    cand = torch.tensor([[5, 9, 11]] * 2)
    s = resid.edited_scores(model, torch.tensor([d_ids, ids]), cand, torch.tensor([1, 1]), torch.tensor([0, 0]),
                            torch.tensor([e[0], a[1]]), add)
    _, donor = _run(hf, d_ids, capture=(e[0], a[1]))
    want, _ = _run(hf, ids, edits={e[0]: donor[:, 0] + add[:, 0].double(), a[1]: donor[:, 1] + add[:, 1].double()})
    np.testing.assert_allclose(s.logits[1].numpy(), want[cand[0]].numpy(), rtol=1e-5, atol=1e-5)
    perm = list(range(len(ids)))[::-1]
    s = resid.edited_scores(model, torch.tensor([ids]), cand[:1], *(torch.zeros(0, dtype=torch.long),) * 3,
                            position_ids=torch.tensor([perm]))
    np.testing.assert_allclose(s.logits[0].numpy(), _run(hf, ids, position_ids=perm)[0][cand[0]].numpy(),
                               rtol=1e-5, atol=1e-5)
    h = resid.resid_at(model, torch.tensor([ids, d_ids]), torch.tensor([[e[1], a[0]], [e[1], a[0]]]))
    for row, x in enumerate((ids, d_ids)):
        np.testing.assert_allclose(h[row].numpy(), _run(hf, x, capture=(e[1], a[0]))[1].numpy(), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- binding-iclr's tests
def _layers(hf):
    return {"gpt2": lambda: hf.transformer.h, "gpt_neox": lambda: hf.gpt_neox.layers}.get(
        hf.config.model_type, lambda: hf.model.layers)()


def _resid_pre_run(hf, ids, position_ids=None, edit=None, raw=False):
    """binding-iclr's formulation: every layer's input (resid_pre), read whole (layer, T, d), and
    optionally rewritten by ``edit(layer, h)`` before the layer runs; log-softmax at the end (the
    raw logits with ``raw``)."""
    seen, hooks = [], []
    for li, layer in enumerate(_layers(hf)):
        def pre(m, args, kwargs, li=li):
            h = args[0] if args else kwargs["hidden_states"]
            if edit is not None:
                h = edit(li, h.clone())
            seen.append(h[0].detach().double())
            if args:
                return (h,) + tuple(args[1:]), kwargs
            return args, {**kwargs, "hidden_states": h}
        hooks.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
    try:
        with torch.no_grad():
            kw = {} if position_ids is None else {"position_ids": torch.tensor([position_ids])}
            logp = hf(torch.tensor([ids]), **kw).logits[0, -1].double()
            logp = logp if raw else logp.log_softmax(-1)
    finally:
        for h in hooks:
            h.remove()
    return logp, torch.stack(seen)


def _pair(which, request, tiny_model_dir, embedded_model):
    """(nnsight model, plain HF model): the embedded NeoX, a tiny model of family ``which``, or
    ("words") a tiny Llama whose vocabulary has ONEHOP's and PARALLEL's words, which the embedded
    one lacks."""
    if which == "neox":
        return embedded_model, request.getfixturevalue("neox_hf")
    path = request.getfixturevalue("words_dir") if which == "words" else tiny_model_dir(which)
    return nr.load_model(str(path)), AutoModelForCausalLM.from_pretrained(path).eval()


@pytest.fixture(scope="module")
def words_dir(tmp_path_factory):
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    from .conftest import _tiny

    path = tmp_path_factory.mktemp("tiny_words")
    tok = AutoTokenizer.from_pretrained(embedded.revision_path("main"))
    # whole words only: "color" must not split "colored" (shapes' question)
    tok.add_tokens([AddedToken(w, single_word=True) for w in ("person", "living", "color", "cities", "respectively")])
    _tiny("llama", len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def neox_hf():
    return AutoModelForCausalLM.from_pretrained(embedded.revision_path("main"), attn_implementation="eager").eval()


@pytest.mark.parametrize("which,family", [("neox", "capitals"), ("neox", "cities"), ("neox", "shapes"),
                                          ("llama", "capitals"), ("llama", "cities"), ("words", "onehop"),
                                          ("words", "parallel")])
def test_factorization_by_side_matches_a_frozen_context_run(which, family, request, tiny_model_dir, embedded_model):
    model, hf = _pair(which, request, tiny_model_dir, embedded_model)
    data = nr.tasks.binding_contexts(3, 2, 2, seed=5, family=family)
    ds = nr.binding(model, data, measure="factorization", batch_size=40, progress=False)
    tok = model.tokenizer
    for ci, (c, src) in enumerate(zip(data.contexts, data.sources)):
        assert not set(c.entities) & set(src.entities) and not set(c.attributes) & set(src.attributes)
        cand = [tok(" " + a, add_special_tokens=False)["input_ids"][0] for a in list(c.answers) + list(src.answers)]
        end = len(tok(c.context())["input_ids"])  # the context section's tokens (with <bos>)
        s_ids, _, _ = _positions(model, src, src.text(0))
        _, source = _resid_pre_run(hf, s_ids)
        names = list(c.entities) + list(src.entities)
        for q, name in enumerate(names):
            ids, e, a = _positions(model, c, c.text(0, entity=name))
            clean_lp, clean = _resid_pre_run(hf, ids)
            np.testing.assert_allclose(ds["factor_logprob"].values[0, 0, 0, q, :, ci], clean_lp[cand].numpy(),
                                       rtol=1e-5, atol=1e-5)
            for side in (0, 1):
                for se, sa in ((0, 1), (1, 0), (1, 1)):
                    def edit(li, h, side=side, se=se, sa=sa):
                        h[0, :end] = clean[li, :end].to(h.dtype)  # the context stays clean
                        for kind, on, first in ((0, se, e[side]), (1, sa, a[side])):
                            for pos in _window(first, kind) if on else ():
                                h[0, pos] = source[li, pos].to(h.dtype)
                        return h
                    lp, _ = _resid_pre_run(hf, ids, edit=edit)
                    np.testing.assert_allclose(ds["factor_logprob"].values[side, se, sa, q, :, ci], lp[cand].numpy(),
                                               rtol=1e-5, atol=1e-5, err_msg=f"{side} {se} {sa} {name}")
    # the outcome accuracy: the predicted answer is the argmax among the four
    lp = ds["factor_logprob"].values
    exp = ds["factor_expected"].values
    for side, se, sa in ((0, 1, 1), (1, 0, 1)):
        hits = [lp[side, se, sa, q, :, p].argmax() == exp[side, se, sa, q] for q in range(4) for p in range(3)
                if exp[side, se, sa, q] >= 0]
        assert float(ds["outcome_accuracy"].values[side, se, sa]) == pytest.approx(np.mean(hits))
    assert exp[0, 1, 1].tolist() == [-1, 1, 2, -1] and exp[1, 1, 0].tolist() == [0, -1, -1, 1]


@pytest.mark.parametrize("which", ["neox", "gpt2"])
def test_position_sweep_matches_shifted_position_ids_with_a_frozen_context(which, request, tiny_model_dir,
                                                                           embedded_model):
    """Rotary models (the repository's): only the keys the question reads move. GPT-2 adds its
    learned positions to the first layer's input, which the freeze leaves as it is (the shift
    would vanish otherwise); from the first layer's output on the context is frozen."""
    model, hf = _pair(which, request, tiny_model_dir, embedded_model)
    data = nr.tasks.binding_contexts(2 if which == "gpt2" else 1, 2, 2, seed=6, family="capitals")
    ds = nr.binding(model, data, measure="position", max_offset=3, batch_size=64, progress=False)
    tok = model.tokenizer
    ids0, e, a = _positions(model, data.contexts[0], data.contexts[0].text(0))
    assert ds["distance"].values.tolist() == [e[1] - e[0], a[1] - a[0]]
    limit = hf.config.max_position_embeddings  # GPT-2's n_positions answers to this name
    # every token of both windows keeps an id in [0, limit)
    want = {t: [o for o in range(-3, 3 + p[1] - p[0]) if p[0] + o >= 0 and p[1] - o >= 0
                and p[0] + w - 1 + o < limit and p[1] + w - 1 - o < limit]
            for t, p, w in (("entity", e, TOKENS[0]), ("attribute", a, TOKENS[1]))}
    for ci, c in enumerate(data.contexts):
        cand = [tok(" " + x, add_special_tokens=False)["input_ids"][0] for x in c.answers]
        end = len(tok(c.context())["input_ids"])
        for q in (0, 1):
            ids, e, a = _positions(model, c, c.text(q))
            _, clean = _resid_pre_run(hf, ids)
            for kind, (t, (p0, p1)) in enumerate((("entity", (e[0], e[1])), ("attribute", (a[0], a[1])))):
                for o in ds["offset"].values:
                    got = ds["position_logprob"].sel(target=t, offset=o).values[q, :, ci]
                    if o not in want[t]:
                        assert np.isnan(got).all()
                        continue
                    pos = list(range(len(ids)))
                    for k in range(TOKENS[kind]):  # the whole window moves
                        pos[p0 + k] += o
                        pos[p1 + k] -= o

                    def edit(li, h):
                        if li or which != "gpt2":
                            h[0, :end] = clean[li, :end].to(h.dtype)
                        return h
                    lp, _ = _resid_pre_run(hf, ids, position_ids=pos, edit=edit)
                    np.testing.assert_allclose(got, lp[cand].numpy(), rtol=1e-5, atol=1e-5, err_msg=f"{t} {o}")
                    # --no_normalize_logits' numbers: the raw logits of the same run
                    lg, _ = _resid_pre_run(hf, ids, position_ids=pos, edit=edit, raw=True)
                    np.testing.assert_allclose(ds["position_logit"].sel(target=t, offset=o).values[q, :, ci],
                                               lg[cand].numpy(), rtol=1e-5, atol=1e-5, err_msg=f"{t} {o}")


def test_local_position_window_is_the_full_sweep_around_both_positions(embedded_model, tmp_path):
    """binding-iclr's local test (offsets -2..2 and Δ-2..Δ+2 per target) reads the same numbers
    as the full sweep (checked against hooks above) at those offsets, and NaN elsewhere."""
    data = nr.tasks.binding_contexts(2, 2, 2, seed=6, family="capitals")
    full = nr.binding(embedded_model, data, measure="position", max_offset=12, progress=False)
    local = nr.binding(embedded_model, data, measure="position", window="local", progress=False)
    nr.testing.assert_valid_result(local)
    assert local.attrs["window"] == "local"
    for t in ("entity", "attribute"):
        d = int(local["distance"].sel(target=t))
        want = sorted({*range(-2, 3), *range(d - 2, d + 3)})
        got = local["position_logprob"].sel(target=t)
        run = [int(o) for o in local["offset"].values if np.isfinite(got.sel(offset=o)).all()]
        assert run == want, t
        np.testing.assert_array_equal(got.sel(offset=want).values,
                                      full["position_logprob"].sel(target=t, offset=want).values)
    with pytest.raises(UsageError, match="window must be one of"):
        nr.binding(embedded_model, data, measure="position", window="near", progress=False)
    res = CliRunner().invoke(app, ["binding", "--measure", "position", "--window", "local", "--family", "capitals",
                                   "--n-contexts", "2", "--n-estimate", "2", "--no-progress",
                                   "--out", str(tmp_path / "local.nc")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["plot", str(tmp_path / "local.nc"), "--out", str(tmp_path / "local.png")])
    assert res.exit_code == 0 and (tmp_path / "local.png").stat().st_size > 0, res.output


def test_cli_factorization_and_position_write_their_figures(tmp_path):
    for measure in ("factorization", "position"):
        out = tmp_path / f"{measure}.nc"
        res = CliRunner().invoke(app, ["binding", "--measure", measure, "--family", "capitals", "--n-contexts", "3",
                                       "--n-estimate", "2", "--max-offset", "2", "--no-progress", "--out", str(out)])
        assert res.exit_code == 0, res.output
        ds = nr.load_result(out)
        assert ds.attrs["measure"] == measure and ds.attrs["freeze_context"] == 1
        fig = nr.plot_result(ds, tmp_path / f"{measure}.png")
        assert fig.axes and (tmp_path / f"{measure}.png").stat().st_size > 0
    assert "side 0" in res.output or "offset" in res.output
    res = CliRunner().invoke(app, ["binding", "--measure", "nope", "--no-progress", "--out", str(tmp_path / "x.nc")])
    assert res.exit_code == 2 and "unknown measure" in res.output and not (tmp_path / "x.nc").exists()


@pytest.mark.parametrize("which", ["neox", "llama", "words"])
def test_mean_interventions_with_the_repository_estimator(which, request, tiny_model_dir, embedded_model):
    model, hf = _pair(which, request, tiny_model_dir, embedded_model)
    family = "onehop" if which == "words" else "capitals"
    data = nr.tasks.binding_contexts(2, 2, 3, seed=7, family=family, split=True)
    train = set(nr.tasks.binding.FAMILIES[family].entities[:20])
    assert all(set(c.entities) <= train for c in data.estimate) and not any(set(c.entities) & train for c in data)
    ds = nr.binding(model, data, measure="means", batch_size=64, progress=False)
    tok = model.tokenizer
    L = hf.config.num_hidden_layers
    # Δ: the same word at side 1 (as stated) minus at side 0 (statements shifted by one), per layer
    # input and per token of the window (the token after an entity: the same word follows the same name)
    W = max(TOKENS)
    diffs = []
    for c in data.estimate:
        ids, e, a = _positions(model, c, c.text(0))
        _, h = _resid_pre_run(hf, ids)
        rev = nr.tasks.BindingContext(c.entities[::-1], c.attributes[::-1], c.family, c.hops)
        rids, re_, ra = _positions(model, rev, rev.text(0))
        _, r = _resid_pre_run(hf, rids)
        assert rev.entities[0] == c.entities[1]
        diffs.append(torch.stack([torch.stack([h[:, p + t] - r[:, q + t] if t < TOKENS[kind] else torch.zeros_like(h[:, 0])
                                               for t in range(W)])
                                  for kind, p, q in ((0, e[1], re_[0]), (1, a[1], ra[0]))]))
    delta = torch.stack(diffs).mean(0)  # (kind, token, L, d)
    got = _vectors(ds, "delta", L)
    np.testing.assert_allclose(got.numpy(), delta.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ds["random_vector"].values, axis=-1), ds["delta_norm"].values,
                               rtol=1e-5, atol=1e-6)
    vectors = {"mean": got, "random": _vectors(ds, "random_vector", L)}
    for ci, (c, s) in enumerate(zip(data.contexts, data.sources)):
        cand = [tok(" " + x, add_special_tokens=False)["input_ids"][0] for x in c.answers]
        end = len(tok(c.context())["input_ids"])
        for q, name in enumerate([c.entities[0], c.entities[1], s.entities[0]]):
            ids, e, a = _positions(model, c, c.text(0, entity=name))
            clean_lp, clean = _resid_pre_run(hf, ids)
            for iv in ("none", "attribute", "entity", "both"):
                for v in ("mean", "random"):
                    vec = vectors[v]

                    def edit(li, h, iv=iv, vec=vec):
                        h[0, :end] = clean[li, :end].to(h.dtype)
                        for kind, pos in ((0, e), (1, a)):
                            if iv == "both" or iv == ("entity", "attribute")[kind]:
                                for t in range(TOKENS[kind]):
                                    h[0, pos[0] + t] = (clean[li, pos[0] + t] + vec[kind, t, li]).to(h.dtype)
                                    h[0, pos[1] + t] = (clean[li, pos[1] + t] - vec[kind, t, li]).to(h.dtype)
                        return h
                    lp = clean_lp if iv == "none" else _resid_pre_run(hf, ids, edit=edit)[0]
                    np.testing.assert_allclose(ds["means_logprob"].sel(intervention=iv, vector=v).values[q, :, ci],
                                               lp[cand].numpy(), rtol=1e-5, atol=1e-5, err_msg=f"{iv} {v} {name}")
    # the repository's accuracy: minus the null query's median per answer, then the original binding must win
    lp = ds["means_logprob"].values
    cal = lp[:, :, :2] - np.median(lp[:, :, 2:3], axis=-1, keepdims=True)
    want = (cal.argmax(axis=3) == np.array([0, 1])[None, None, :, None]).mean(-1)
    np.testing.assert_allclose(ds["means_accuracy"].values[:, :, :2], want)
    assert np.isnan(ds["means_accuracy"].values[:, :, 2]).all()


def test_cli_means_uses_split_words_and_summarizes(tmp_path):
    out = tmp_path / "means.nc"
    res = CliRunner().invoke(app, ["binding", "--measure", "means", "--family", "cities", "--n-contexts", "3",
                                   "--n-estimate", "3", "--no-progress", "--out", str(out)])
    assert res.exit_code == 0, res.output
    ds = nr.load_result(out)
    assert ds.attrs["measure"] == "means" and ds.attrs["split"] == 1 and "mean vector" in res.output
    assert nr.plot_result(ds).axes
    res = CliRunner().invoke(app, ["binding", "--measure", "cyclic", "--n-pairs", "3", "--n-contexts", "3",
                                   "--n-estimate", "3", "--no-progress", "--out", str(tmp_path / "cyc.nc")])
    assert res.exit_code == 0 and "cyclic swaps" in res.output, res.output
    assert nr.load_result(tmp_path / "cyc.nc").attrs["split"] == 1
    res = CliRunner().invoke(app, ["binding", "--measure", "pairwise", "--n-pairs", "3", "--n-contexts", "3",
                                   "--n-estimate", "3", "--no-progress", "--out", str(tmp_path / "pw.nc")])
    assert res.exit_code == 0 and "0↔2" in res.output and "switched" in res.output, res.output
    pw = nr.load_result(tmp_path / "pw.nc")
    assert pw.attrs["split"] == 1 and pw.attrs["measure"] == "pairwise"
    bars = nr.plot_result(pw).axes[0].patches  # control, entity, attribute
    np.testing.assert_allclose([b.get_height() for b in bars][:3], pw["pairwise_accuracy"].values)
    res = CliRunner().invoke(app, ["binding", "--measure", "subspace", "--n-contexts", "2", "--n-estimate", "2",
                                   "--no-progress", "--out", str(tmp_path / "sub.nc")])
    assert res.exit_code == 0 and "subspace" in res.output, res.output
    sub = nr.load_result(tmp_path / "sub.nc")
    assert sub.sizes["root"] == 8 and sub.sizes["x"] == 10 and nr.plot_result(sub).axes
    for m in ("cyclic", "pairwise"):
        res = CliRunner().invoke(app, ["binding", "--measure", m, "--no-progress", "--out", str(tmp_path / "x.nc")])
        assert res.exit_code == 2 and "3 pairs" in res.output and not (tmp_path / "x.nc").exists()


def _stated_and_shifted(model, hf, c):
    """Residuals (layer inputs) and entity/attribute positions of a context as stated and with
    its statements shifted by one (E1A1, …, E0A0): the runs binding-iclr's Δ estimator reads."""
    ids, e, a = _positions(model, c, c.text(0))
    sh = nr.tasks.BindingContext(c.entities[1:] + c.entities[:1], c.attributes[1:] + c.attributes[:1], c.family, c.hops)
    sids, se, sa = _positions(model, sh, sh.text(0))
    return (_resid_pre_run(hf, ids)[1], e, a), (_resid_pre_run(hf, sids)[1], se, sa)


def _per_token(kind, diff):
    """(token, L, d): ``diff(t)`` for the tokens of a kind's window, 0 past it."""
    return torch.stack([diff(t) if t < TOKENS[kind] else torch.zeros_like(diff(0)) for t in range(max(TOKENS))])


def _three_pair_deltas(model, hf, contexts):
    """(kind, 2, token, L, d): Δ_1 = E1 at side 1 (as stated) − at side 0 (shifted by one); Δ_2 =
    E0 at side 2 (shifted) − at side 0 (stated); per token of the window; the same at the
    attributes; mean over contexts."""
    out = []
    for c in contexts:
        (h, e, a), (g, se, sa) = _stated_and_shifted(model, hf, c)
        out.append(torch.stack([torch.stack([_per_token(kind, lambda t: h[:, p[1] + t] - g[:, q[0] + t]),
                                             _per_token(kind, lambda t: g[:, q[2] + t] - h[:, p[0] + t])])
                                for kind, p, q in ((0, e, se), (1, a, sa))]))
    return torch.stack(out).mean(0)


@pytest.mark.parametrize("which,measure", [("neox", "cyclic"), ("llama", "cyclic"), ("neox", "pairwise"),
                                           ("llama", "pairwise")])
def test_cyclic_swaps_of_three_binding_ids(which, measure, request, tiny_model_dir, embedded_model):
    """Fig. 6 (right): the 3-cycles; "pairwise", Table 1 without --cyclic: the three switches of
    two sides (the third side untouched), each its own inverse."""
    model, hf = _pair(which, request, tiny_model_dir, embedded_model)
    data = nr.tasks.binding_contexts(2, 3, 2, seed=8, family="cities", split=True)
    ds = nr.binding(model, data, measure=measure, batch_size=64, progress=False)
    nr.testing.assert_valid_result(ds)
    perms = ((1, 2, 0), (2, 0, 1)) if measure == "cyclic" else ((1, 0, 2), (2, 1, 0), (0, 2, 1))
    tok = model.tokenizer
    L = hf.config.num_hidden_layers
    want = _three_pair_deltas(model, hf, data.estimate)  # (kind, k, token, L, d)
    got = _vectors(ds, "delta", L)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-5)
    ids_ = torch.cat([torch.zeros_like(got[:, :1]), got], 1)  # Δ_0 = 0
    for ci, c in enumerate(data.contexts):
        cand = [tok(" " + x, add_special_tokens=False)["input_ids"][0] for x in c.answers]
        end = len(tok(c.context())["input_ids"])
        for q in range(3):
            ids, e, a = _positions(model, c, c.text(q))
            clean_lp, clean = _resid_pre_run(hf, ids)
            np.testing.assert_allclose(ds[f"{measure}_logprob"].values[0, 0, q, :, ci], clean_lp[cand].numpy(), rtol=1e-5,
                                       atol=1e-5)
            for p, cyc in enumerate(perms):
                for kind, pos in ((0, e), (1, a)):
                    def edit(li, h, kind=kind, pos=pos, cyc=cyc):
                        h[0, :end] = clean[li, :end].to(h.dtype)
                        for side in (s for s in range(3) if cyc[s] != s):  # a side left in place: no edit
                            for t, x in enumerate(_window(pos[side], kind)):
                                h[0, x] = (clean[li, x] + ids_[kind, cyc[side], t, li] - ids_[kind, side, t, li]).to(h.dtype)
                        return h
                    lp, _ = _resid_pre_run(hf, ids, edit=edit)
                    np.testing.assert_allclose(ds[f"{measure}_logprob"].values[p, 1 + kind, q, :, ci], lp[cand].numpy(),
                                               rtol=1e-5, atol=1e-5, err_msg=f"{p} {kind} {q}")
    # entities moved: E_i answers A_cyc(i); attributes moved: A_cyc⁻¹(i); balanced by the median over queries and contexts
    inverse = [[perm.index(q) for q in range(3)] for perm in perms]
    assert ds[f"{measure}_intended"].values.tolist() == [[[0, 1, 2], list(perm), inv] for perm, inv in zip(perms, inverse)]
    if measure == "pairwise":
        assert list(ds["switch"].values) == ["0↔1", "0↔2", "1↔2"] and inverse == [list(p) for p in perms]
    lp = ds[f"{measure}_logprob"].values
    bal = lp - np.median(lp, axis=(2, 4), keepdims=True)
    right = bal.argmax(axis=3) == ds[f"{measure}_intended"].values[..., None]
    np.testing.assert_allclose(ds[f"{measure}_accuracy"].values, right.mean(axis=(0, 2, 3)))


@pytest.mark.parametrize("which", [pytest.param("neox", marks=pytest.mark.slow), "llama"])
def test_cross_task_subspace_binds_with_another_tasks_difference_vectors(which, request, tiny_model_dir,
                                                                          embedded_model, tmp_path):
    """Table 2: the measured family's own IDs B_i taken out, the source's D_1..D_3 (4 pairs; D_2,
    D_3 subtract another word, as the repository's ``extract_k_means``) put in."""
    model, hf = _pair(which, request, tiny_model_dir, embedded_model)
    data = nr.tasks.binding_contexts(2, 3, 2, seed=9, family="capitals", estimate_family="fruits", estimate_pairs=4)
    assert all(c.family == "capitals" and len(c.entities) == 3 for c in data.base_estimate)
    ds = nr.binding(model, data, measure="cross_subspace", batch_size=64, progress=False)
    nr.testing.assert_valid_result(ds)
    tok = model.tokenizer
    L = hf.config.num_hidden_layers

    src = []
    for c in data.estimate:  # D_k = side k as stated − side 0 shifted, k = 1, 2, 3, per token of the window
        (h, e, a), (g, se, sa) = _stated_and_shifted(model, hf, c)
        src.append(torch.stack([torch.stack([_per_token(kind, lambda t, k=k: h[:, p[k] + t] - g[:, q[0] + t])
                                             for k in (1, 2, 3)]) for kind, p, q in ((0, e, se), (1, a, sa))]))
    D = torch.stack(src).mean(0)  # (kind, 3, token, L, d)
    np.testing.assert_allclose(_vectors(ds, "source_delta", L).numpy(), D.numpy(), rtol=1e-4, atol=1e-5)
    B = _three_pair_deltas(model, hf, data.base_estimate)  # B_1, B_2 as the cyclic swaps estimate them
    got = _vectors(ds, "delta", L)
    np.testing.assert_allclose(got.numpy(), B.numpy(), rtol=1e-4, atol=1e-5)
    B = torch.cat([torch.zeros_like(got[:, :1]), got], 1)
    vectors = {"fruits": _vectors(ds, "source_delta", L), "zeros": torch.zeros_like(B)}
    for ci, c in enumerate(data.contexts):
        cand = [tok(" " + x, add_special_tokens=False)["input_ids"][0] for x in c.answers]
        end = len(tok(c.context())["input_ids"])
        for q in range(3):
            ids, e, a = _positions(model, c, c.text(q))
            _, clean = _resid_pre_run(hf, ids)
            for src_name, vec in vectors.items():
                for p, cyc in enumerate(((1, 2, 0), (2, 0, 1))):
                    def edit(li, h, vec=vec, cyc=cyc):
                        h[0, :end] = clean[li, :end].to(h.dtype)
                        for side in range(3):
                            for t, x in enumerate(_window(e[side], 0)):
                                h[0, x] = (clean[li, x] + vec[0, side, t, li] - B[0, side, t, li]).to(h.dtype)
                            for t, x in enumerate(_window(a[side], 1)):
                                h[0, x] = (clean[li, x] + vec[1, cyc[side], t, li] - B[1, side, t, li]).to(h.dtype)
                        return h
                    lp, _ = _resid_pre_run(hf, ids, edit=edit)
                    np.testing.assert_allclose(ds["cross_logprob"].sel(source=src_name).values[p, q, :, ci],
                                               lp[cand].numpy(), rtol=1e-5, atol=1e-5, err_msg=f"{src_name} {p} {q}")
    assert list(ds["source"].values) == ["fruits", "zeros", "random"]
    lp = ds["cross_logprob"].values
    bal = lp - np.median(lp, axis=(2, 4), keepdims=True)
    right = bal.argmax(axis=3) == np.array([[2, 0, 1], [1, 2, 0]])[None, :, :, None]  # E_i -> A_cyc^-1(i)
    np.testing.assert_allclose(ds["cross_accuracy"].values, right.mean(axis=(1, 2, 3)))
    intended = [[lp[s, c, q, [2, 0, 1][q] if c == 0 else [1, 2, 0][q], i] for c in range(2) for q in range(3)
                 for i in range(lp.shape[4])] for s in range(3)]  # Table 2's second row
    np.testing.assert_allclose(ds["cross_intended_logprob"].values, np.mean(intended, axis=1), rtol=1e-12)
    res = CliRunner().invoke(app, ["binding", "--measure", "cross_subspace", "--n-pairs", "3", "--family", "capitals",
                                   "--estimate-family", "fruits", "--n-contexts", "2", "--n-estimate", "2",
                                   "--no-progress", "--out", str(tmp_path / "cross.nc")])
    assert res.exit_code == 0 and "cross-task subspace" in res.output, res.output
    assert nr.plot_result(nr.load_result(tmp_path / "cross.nc")).axes
    res = CliRunner().invoke(app, ["binding", "--measure", "cross_subspace", "--no-progress",
                                   "--out", str(tmp_path / "x.nc")])
    assert res.exit_code == 2 and "--n-pairs 3" in res.output and not (tmp_path / "x.nc").exists()


def test_cross_task_estimate_contexts_come_from_the_other_family_and_its_train_words():
    fam = nr.tasks.binding.FAMILIES
    data = nr.tasks.binding_contexts(4, 2, 5, seed=2, family="capitals", split=True, estimate_family="fruits")
    assert all(c.family == "fruits" for c in data.estimate) and all(c.family == "capitals" for c in data)
    assert all(set(c.attributes) <= set(fam["fruits"].attributes[:len(fam["fruits"].attributes) // 2])
               for c in data.estimate)
    assert all(set(c.attributes) <= set(fam["capitals"].attributes[8:]) for c in data)
    assert data.params["estimate_family"] == "fruits"
    with pytest.raises(UsageError, match="estimate_family must be one of"):
        nr.tasks.binding_contexts(2, estimate_family="nope")


@pytest.mark.parametrize("cross", [False, True])
def test_subspace_grid_moves_side_one_in_the_plane_of_the_two_deltas(embedded_model, neox_hf, cross):
    """Fig. 5; ``cross``, the repository's --cross_countries: the attributes' coordinates on the
    opposite sides (side 1's −Δ_1 stays at side 1)."""
    model, hf = embedded_model, neox_hf
    data = nr.tasks.binding_contexts(2, 2, 2, seed=9, family="cities", split=True, estimate_pairs=3)
    ds = nr.binding(model, data, measure="subspace", roots=[(0.5, 0.7)], grid=2, batch_size=64,
                    cross_attributes=cross, progress=False)
    assert ds.attrs["cross_attributes"] == int(cross)
    delta = _vectors(ds, "delta", None)  # (kind, k, token, D, d), checked in the cyclic test
    s0, s1 = delta[:, 0], delta[:, 1]
    # one Gram–Schmidt step over every token and the repository's depths, resid_pre of blocks 0..L-1
    # (``coref/datascience.py:128-147``): the toolkit's last depth, the last block's output, left out
    r0, r1 = s0[:, :, :-1], s1[:, :, :-1]
    ortho = s1 - (r0 * r1).sum() / (r0 * r0).sum() * s0
    assert abs(float((ortho[:, :, :-1] * r0).sum())) < 1e-6 * float(r0.norm() * r1.norm())
    np.testing.assert_allclose(ds["delta2_coords"].values, [float((r1 * r0).sum() / (r0 * r0).sum()), 1.0], rtol=1e-6)
    assert ds["x"].values.tolist() == [-0.5, 1.5]
    tok = model.tokenizer
    for ci, (c, s) in enumerate(zip(data.contexts, data.sources)):
        cand = [tok(" " + x, add_special_tokens=False)["input_ids"][0] for x in c.answers]
        end = len(tok(c.context())["input_ids"])
        for q, name in enumerate([c.entities[0], c.entities[1], s.entities[0]]):
            ids, e, a = _positions(model, c, c.text(0, entity=name))
            _, clean = _resid_pre_run(hf, ids)
            for xi, x in enumerate((-0.5, 1.5)):
                for yi, y in enumerate((-0.5, 1.5)):
                    root, point = 0.5 * s0 + 0.7 * ortho, x * s0 + y * ortho
                    vec = {(kind, side): (root, point)[1 - side if cross and kind else side] - (s0 if side else 0)
                           for kind in (0, 1) for side in (0, 1)}

                    def edit(li, h, vec=vec):
                        h[0, :end] = clean[li, :end].to(h.dtype)
                        for kind, pos in ((0, e), (1, a)):
                            for side in (0, 1):
                                for t, x in enumerate(_window(pos[side], kind)):
                                    h[0, x] = (clean[li, x] + vec[kind, side][kind, t, li]).to(h.dtype)
                        return h
                    lp, _ = _resid_pre_run(hf, ids, edit=edit)
                    np.testing.assert_allclose(ds["subspace_logprob"].values[0, xi, yi, q, :, ci], lp[cand].numpy(),
                                               rtol=1e-5, atol=1e-5)
    lp = ds["subspace_logprob"].values
    m = lp.mean(-1)  # (root, x, y, query, answer): the mean over contexts
    np.testing.assert_allclose(ds["subspace_margin"].values, m[..., 0, 0] + m[..., 1, 1] - m[..., 0, 1] - m[..., 1, 0])
    cal = lp[:, :, :, :2] - np.median(lp[:, :, :, 2:3], axis=-1, keepdims=True)
    want = (cal.argmax(axis=4) == np.array([0, 1])[None, None, None, :, None]).mean(axis=(3, 4))
    np.testing.assert_allclose(ds["subspace_accuracy"].values, want)


def test_many_pairs_without_sources_and_small_row_budgets(embedded_model):
    """Contexts with more pairs than a disjoint source allows still serve the accuracy measure;
    the frozen-context tests split a context's rows over passes to honour batch_size."""
    data = nr.tasks.binding_contexts(2, 9, 2, seed=1)
    assert data.sources == () and data.n_pairs == 9
    with pytest.raises(UsageError, match="no source contexts"):
        nr.binding(embedded_model, data, measure="factorization", progress=False)
    with pytest.raises(UsageError, match="estimate_pairs"):
        nr.tasks.binding_contexts(2, 2, 2, split=True, estimate_pairs=30)
    small = nr.tasks.binding_contexts(2, 2, 2, seed=3, family="capitals")
    for measure in ("factorization", "position"):
        a = nr.binding(embedded_model, small, measure=measure, max_offset=2, batch_size=7, progress=False)
        b = nr.binding(embedded_model, small, measure=measure, max_offset=2, batch_size=512, progress=False)
        assert a.attrs["n_forward_passes"] > b.attrs["n_forward_passes"] == 1
        for v in a.data_vars:
            np.testing.assert_allclose(a[v].values, b[v].values, rtol=1e-5, atol=1e-5, err_msg=v)


def test_edit_windows_are_checked_and_multi_token_names_are_located(embedded_model, tmp_path):
    """Windows must stay inside the context and apart; a name of several tokens is located at its
    first token; the CLI passes the widths on and records them."""
    data = nr.tasks.binding_contexts(2, 2, 2, seed=4, family="cities")
    for bad in ({"entity_tokens": 0}, {"attribute_tokens": 1.5}, {"entity_tokens": True}):
        with pytest.raises(UsageError, match=r"(entity|attribute)_tokens must be an integer >= 1 \(got "):
            nr.binding(embedded_model, data, measure="factorization", progress=False, **bad)
    # "Alice lives in Paris .": a 5-token entity window runs into the attribute
    with pytest.raises(UsageError, match="overlap each other or leave the context"):
        nr.binding(embedded_model, data, measure="means", entity_tokens=5, progress=False)
    ctx = nr.tasks.BindingContext(("Alice Smith", "Bob Jones"), ("Paris", "Rome"), "cities")
    ids, e, a = _positions(embedded_model, ctx, ctx.text(1))
    tok = embedded_model.tokenizer
    assert tok.convert_ids_to_tokens([ids[e[0]], ids[e[0] + 1], ids[a[0]], ids[e[1]], ids[a[1]]]) == \
        ["Alice", "Smith", "Paris", "Bob", "Rome"]
    out = tmp_path / "w.nc"
    res = CliRunner().invoke(app, ["binding", "--measure", "factorization", "--n-contexts", "2", "--n-estimate", "2",
                                   "--entity-tokens", "1", "--no-progress", "--out", str(out)])
    assert res.exit_code == 0, res.output
    ds = nr.load_result(out)
    assert ds.attrs["entity_tokens"] == 1 and ds.attrs["attribute_tokens"] == 1
    one = nr.binding(embedded_model, data, measure="factorization", entity_tokens=1, progress=False)
    two = nr.binding(embedded_model, data, measure="factorization", progress=False)
    assert two.attrs["entity_tokens"] == 2 and not np.allclose(one["factor_logprob"], two["factor_logprob"])
    res = CliRunner().invoke(app, ["binding", "--measure", "means", "--n-contexts", "2", "--n-estimate", "2",
                                   "--entity-tokens", "9", "--no-progress", "--out", str(tmp_path / "x.nc")])
    assert res.exit_code == 2 and "use fewer tokens" in res.output and not (tmp_path / "x.nc").exists()


# --------------------------------------------------------------------------- binding-iclr's MCQ
REVIEWS = [("a gripping , funny film .", 1), ("dull and far too long .", 0), ("the best thing this year", 1),
           ("a mess from start to end", 0), ("warm , wise and moving .", 1), ("nothing here works .", 0),
           ("smart fun", 1), ("it never finds its feet , and the jokes fall flat", 0)]


@pytest.fixture(scope="module")
def mcq_model(tmp_path_factory):
    """A tiny Llama with a byte-level BPE tokenizer trained here on MCQ prompts (the embedded
    word-level vocabulary has no "Classify" or reviews): newlines are tokens, as in GPT-2 and
    Llama, so each option's line ends where the repository's exclusive end says."""
    from nnsight_reasoning.tasks.mcq import LABELS, OPTIONS, STATEMENT, TEMPLATE

    from .conftest import tiny_bpe_llama

    corpus = [TEMPLATE.format(context="".join(STATEMENT.format(label=a, option=o) for a, o in zip(ls, OPTIONS)),
                              question=r) + f" {ls[0]}" for r, _ in REVIEWS for ls in zip(LABELS, LABELS[1:])] * 20
    corpus += [f"Answer: {x}" for x in LABELS] * 50  # every letter after a space is one token
    # 3 layers: an edit of one line reaches another line's token by layer 1 and the answer through
    # it by layer 2, so freezing the context makes a difference (with 2 it cannot)
    path = tiny_bpe_llama(tmp_path_factory.mktemp("tiny_mcq"), corpus, n_layers=3)
    return nr.load_model(str(path)), AutoModelForCausalLM.from_pretrained(path).eval(), path


def test_mcq_exchange_matches_hooks(mcq_model, tmp_path):
    model, hf, path = mcq_model
    sst = tmp_path / "sst2.tsv"  # GLUE's SST-2 layout: sentence<TAB>label
    sst.write_text("sentence\tlabel\n" + "".join(f"{r}\t{y}\n" for r, y in REVIEWS))
    data = nr.tasks.mcq_contexts(3, seed=1, data=str(sst))
    assert all(c.reviews[q] in [r for r, y in REVIEWS if y == ("Negative", "Positive").index(c.options[q])]
               for c in data for q in (0, 1))
    ds = nr.binding(model, data, measure="mcq", max_width=3, batch_size=7, progress=False)
    nr.testing.assert_valid_result(ds)
    loose = nr.binding(model, data, measure="mcq", max_width=3, batch_size=7, freeze_context=False, progress=False)
    assert ds.attrs["freeze_context"] == 1 and loose.attrs["freeze_context"] == 0
    tok = model.tokenizer
    for ci, c in enumerate(data.contexts):
        assert c.text(0, swapped=True).count(f"\n{c.labels[1]}. {c.options[0]}") == 1
        cand = [tok(" " + x, add_special_tokens=False)["input_ids"][0] for x in c.labels]
        for q in (0, 1):
            enc = tok(c.text(q), return_offsets_mapping=True, add_special_tokens=False)
            ids, offsets = enc["input_ids"], enc["offset_mapping"]
            src = tok(c.text(q, swapped=True), add_special_tokens=False)["input_ids"]
            # the token after each option's line: the next line's newline
            ends = [next(t for t, (a, b) in enumerate(offsets) if a >= end) for _, end in c.statement_spans()]
            assert all(tok.decode([ids[e]]) == "\n" for e in ends)
            _, source = _run(hf, src, capture=range(len(src)))
            _, clean = _resid_pre_run(hf, ids)
            _, source_pre = _resid_pre_run(hf, src)
            for w in range(4):
                edits = {p: source[:, p] for e in ends for p in range(e - w + 1, e + 1)} if w else None
                logits, _ = _run(hf, ids, edits=edits)  # unfrozen: an edit of line 0 reaches line 1's tokens
                want = logits.double().log_softmax(-1)[cand].numpy()
                np.testing.assert_allclose(loose["mcq_logprob"].values[w, q, :, ci], want, rtol=1e-5, atol=1e-5,
                                           err_msg=f"width {w} query {q} context {ci}")

                # the repository's runner: every layer's input keeps the context section (up to the token
                # after the last option's line) clean, then the windows take the letter-swapped context's
                def frozen(li, h, w=w):
                    h[0, :ends[-1]] = clean[li, :ends[-1]].to(h.dtype)
                    for e in ends if w else ():
                        for p in range(e - w + 1, e + 1):
                            h[0, p] = source_pre[li, p].to(h.dtype)
                    return h
                lp, _ = _resid_pre_run(hf, ids, edit=frozen)
                np.testing.assert_allclose(ds["mcq_logprob"].values[w, q, :, ci], lp[cand].numpy(), rtol=1e-5,
                                           atol=1e-5, err_msg=f"frozen: width {w} query {q} context {ci}")
    assert not np.allclose(ds["mcq_logprob"].values[1:], loose["mcq_logprob"].values[1:], atol=1e-4)  # freezing matters
    lp = ds["mcq_logprob"].values
    np.testing.assert_array_equal(ds["mcq_swapped"].values, lp.argmax(axis=2) == np.array([1, 0])[None, :, None])
    np.testing.assert_allclose(ds["mcq_swap_accuracy"].values, ds["mcq_swapped"].values.mean(axis=(1, 2)))
    # reduce_balanced_acc(t, [1, 0]) of the repository on t = (query, prompt, answer) per width
    for w in range(4):
        t = lp[w].transpose(0, 2, 1)  # (query, prompt, answer)
        med = np.median(t.reshape(-1, 2), axis=0)
        want = ((t - med).argmax(-1) == np.array([1, 0])[:, None]).mean()
        assert float(ds["mcq_balanced_swap_accuracy"].values[w]) == pytest.approx(want)
    assert float(ds["control_accuracy"]) == pytest.approx((lp[0].argmax(axis=1) == np.array([0, 1])[:, None]).mean())
    assert nr.plot_result(ds).axes
    with pytest.raises(UsageError, match="reaches past the start of an option's line"):
        nr.binding(model, data, measure="mcq", max_width=40, progress=False)
    with pytest.raises(UsageError, match="only it does"):
        nr.binding(model, data, measure="means", progress=False)
    with pytest.raises(nr.tasks.TaskError, match="lacks column"):
        (tmp_path / "bad.csv").write_text("text,label\nhi,1\n")
        nr.tasks.mcq_contexts(2, data=str(tmp_path / "bad.csv"))
    with pytest.raises(nr.RunError, match="cannot reach the Hugging Face Hub for 'no-such-user/no-such-dataset'"):
        nr.tasks.mcq_contexts(2, data="no-such-user/no-such-dataset")  # offline (the tests' setting): exit 1
    out = tmp_path / "mcq.nc"
    res = CliRunner().invoke(app, ["binding", "--measure", "mcq", "--model", str(path), "--data", str(sst),
                                   "--n-contexts", "3", "--seed", "1", "--max-width", "3", "--no-progress",
                                   "--out", str(out)])
    assert res.exit_code == 0 and "MCQ exchange" in res.output, res.output
    np.testing.assert_allclose(nr.load_result(out)["mcq_logprob"].values, ds["mcq_logprob"].values, rtol=1e-6)
    res = CliRunner().invoke(app, ["binding", "--measure", "mcq", "--model", str(path), "--data", str(sst),
                                   "--n-contexts", "3", "--seed", "1", "--max-width", "3", "--no-freeze-context",
                                   "--no-progress", "--out", str(tmp_path / "loose.nc")])
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(nr.load_result(tmp_path / "loose.nc")["mcq_logprob"].values,
                               loose["mcq_logprob"].values, rtol=1e-6)
    res = CliRunner().invoke(app, ["binding", "--data", str(sst), "--no-progress", "--out", str(tmp_path / "x.nc")])
    assert res.exit_code == 2 and "--data is for --measure mcq" in res.output and not (tmp_path / "x.nc").exists()


@pytest.mark.parametrize("family", list(nr.tasks.binding.FAMILIES))
def test_every_family_locates_its_words_whatever_the_statement_order(family, request):
    """Entities and attributes found at their own tokens: attribute first (shapes), after an
    article (boxes), all pairs in one sentence (parallel), a question with more words (onehop)."""
    path = request.getfixturevalue("words_dir")
    model = nr.load_model(str(path))
    tok = model.tokenizer
    for c in nr.tasks.binding_contexts(3, 3, 2, seed=11, family=family).contexts:
        ids, e, a = _positions(model, c, c.text(2))
        assert tok.convert_ids_to_tokens([ids[p] for p in e]) == list(c.entities)
        assert tok.convert_ids_to_tokens([ids[p] for p in a]) == list(c.attributes)
        assert len(set(e + a)) == 6 and max(e + a) < len(tok(c.context())["input_ids"])
    accuracy_ok = family in nr.tasks.binding.EXPERIMENT_FAMILIES
    if not accuracy_ok:
        with pytest.raises(UsageError, match="takes the binding-iclr measures"):
            nr.binding(model, nr.tasks.binding_contexts(2, 2, 2, family=family), progress=False)


def test_cli_splits_the_words_for_one_familys_means_not_for_cross_task_means(tmp_path):
    """binding-iclr splits the vocabulary for its own task's mean interventions but not for the
    cross-task ones (rx:547, 550, 684, 687): --split's default follows; --split still forces it."""
    import json

    def split_of(*extra):
        out = tmp_path / f"r{len(list(tmp_path.iterdir()))}.nc"
        res = CliRunner().invoke(app, ["binding", "--measure", "means", "--family", "capitals", "--n-contexts", "4",
                                       "--n-estimate", "4", "--no-progress", "--out", str(out), *extra])
        assert res.exit_code == 0, res.output
        return json.loads(nr.load_result(out).attrs["task_params"]).get("split", False)

    assert split_of() is True
    assert split_of("--estimate-family", "fruits") is False
    assert split_of("--estimate-family", "fruits", "--split") is True


def _hop_keys(c) -> list[str]:
    """The capitals a ONEHOP question states a colour for, in the order stated."""
    return [k for k, _ in c.hops]


def test_onehop_states_the_repositorys_number_of_hops():
    """binding-iclr's num_qn_context (coref/datasets/onehop.py:71-80; 4 for factorization, 2 for
    position, 3 for means and cyclic, scripts/run_experiment.py:21, 91, 134, 200, 617): the question
    covers the first attribute ids, the context's, then the source's, then others."""
    capital = dict(zip(nr.tasks.binding.COUNTRIES, nr.tasks.binding.CAPITALS))
    colours = nr.tasks.binding.FAMILIES["onehop"].hop_values
    default = nr.tasks.binding_contexts(5, 2, 4, seed=3, family="onehop")
    assert "hops" not in default.params
    for c, s in zip(default.contexts, default.sources):  # default: the context's and the source's (2n)
        assert sorted(_hop_keys(c)) == sorted(capital[a] for a in c.attributes + s.attributes) and s.hops == c.hops
    for hops in (2, 3, 4, 6):
        d = nr.tasks.binding_contexts(5, 2, 4, seed=3, family="onehop", hops=hops)
        assert d.params["hops"] == hops
        for c, s in zip(d.contexts, d.sources):
            keys = _hop_keys(c)
            assert len(keys) == len(set(keys)) == hops and len({v for _, v in c.hops}) == hops
            want = [capital[a] for a in (c.attributes + s.attributes)[:hops]]
            assert set(want) <= set(keys) and s.hops == c.hops
            assert set(keys) <= set(nr.tasks.binding.CAPITALS)
        for e in d.estimate:  # no source: the context's capitals, then others
            assert {capital[a] for a in e.attributes} <= set(_hop_keys(e)) and len(e.hops) == hops
    # with split, the estimate (train) contexts' colours are the first half (onehop.py:39-40); the measured
    # contexts' extra capitals come from the test half
    d = nr.tasks.binding_contexts(20, 2, 20, seed=5, family="onehop", split=True, hops=4)
    train = set(colours[:len(colours) // 2])
    assert all({v for _, v in e.hops} <= train for e in d.estimate)
    assert any({v for _, v in c.hops} - train for c in d.contexts)
    test_capitals = {capital[a] for a in nr.tasks.binding.COUNTRIES[len(nr.tasks.binding.COUNTRIES) // 2:]}
    assert all(set(_hop_keys(c)) <= test_capitals for c in d.contexts)
    with pytest.raises(nr.tasks.TaskError, match="between 3"):
        nr.tasks.binding_contexts(2, 3, 2, family="onehop", hops=2)
    with pytest.raises(nr.tasks.TaskError, match="onehop"):
        nr.tasks.binding_contexts(2, 2, 2, family="capitals", hops=2)


def test_cli_states_the_repositorys_hops_per_measure(tmp_path, words_dir):
    import json

    def hops_of(measure, *extra):
        out = tmp_path / f"r{len(list(tmp_path.iterdir()))}.nc"
        res = CliRunner().invoke(app, ["binding", "--measure", measure, "--family", "onehop", "--model",
                                       str(words_dir), "--n-contexts", "2", "--n-estimate", "2", "--max-offset", "1",
                                       "--no-progress", "--out", str(out), *extra])
        assert res.exit_code == 0, res.output
        return json.loads(nr.load_result(out).attrs["task_params"]).get("hops")

    assert hops_of("factorization") is None  # 2n, the default
    assert hops_of("position") == 2 and hops_of("means") == 3 and hops_of("cyclic", "--n-pairs", "3") == 3
    assert hops_of("position", "--hops", "4") == 4
    bad = tmp_path / "bad.nc"
    for args in (["--measure", "means", "--family", "capitals"], ["--measure", "mcq", "--family", "onehop"]):
        res = CliRunner().invoke(app, ["binding", *args, "--hops", "3", "--out", str(bad)])
        assert res.exit_code == 2 and "--hops applies to --family onehop" in res.output and not bad.exists()
