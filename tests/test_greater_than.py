"""Greater-than on a tokenizer like Pythia's (answers continue the start year's century, "17" →
"32", a token other than " 32") and the greater-than components (circuits-over-time's
verify_greater_than.py) against a plain-PyTorch hook reference: every head's output made from
the output projection's input by its weight slice, each MLP's output read by a forward hook,
both through the final norm with the scale read from the run's own norm input; attention
probabilities from the eager model's ``output_attentions``."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

import nnsight_reasoning as nr
from nnsight_reasoning.errors import UsageError

from .conftest import eager_hf, tiny_year_bpe
from .reference_edges import NORMS, _get


@pytest.fixture(scope="module")
def year_bpe(tmp_path_factory):
    """(toolkit model, plain HF model, tokenizer) of a tiny GPT-NeoX with the year BPE."""
    path = tiny_year_bpe(tmp_path_factory.mktemp("year_bpe"))
    model = nr.load_model(str(path))
    return model, eager_hf(path), model.tokenizer


def _pairs(model, n, seed=0):
    return nr.tasks.get_task("greater_than").pairs(n_prompts=n, seed=seed, tokenizer=model.tokenizer)


def test_answers_continue_the_century_on_a_bpe_tokenizer(year_bpe):
    model, hf, tok = year_bpe
    pairs = _pairs(model, 12)
    for p in pairs:  # drawn years are written as " XX", "YY" (the repository's get_valid_years)
        year = p.base.split()[-5]
        assert tok.convert_ids_to_tokens(tok(" " + year)["input_ids"]) == ["Ġ" + year[:2], year[2:]]
        assert p.joined
    from nnsight_reasoning.experiments.patch import tokenize_pairs

    toks = tokenize_pairs(model, list(pairs))
    for p, (a, b) in zip(pairs, toks.answers):
        assert (a, b) == (tok(p.base_answer)["input_ids"][0], tok(p.source_answer)["input_ids"][0])
        assert a != tok(" " + p.base_answer)["input_ids"][0]  # the spaced token is another one here
    examples = nr.tasks.examples("greater_than", n_prompts=6, tokenizer=tok)
    ds = nr.evaluate(model, examples, progress=False)
    for k, e in enumerate(examples):
        with torch.no_grad():
            logits = hf(torch.tensor([tok(e.prompt)["input_ids"]])).logits[0, -1].double()
        good = [tok(a)["input_ids"][0] for a in e.answers]
        bad = [tok(a)["input_ids"][0] for a in e.distractors]
        probs = logits.softmax(-1)
        assert float(ds.p_answer[k]) == pytest.approx(float(probs[good].sum()), rel=1e-5)
        assert float(ds.logit_diff[k]) == pytest.approx(float(logits[good].mean() - logits[bad].mean()), abs=1e-4)
        assert float(ds.prob_diff[k]) == pytest.approx(float(probs[good].sum() - probs[bad].sum()), abs=1e-6)
    from nnsight_reasoning.tasks import PromptPair

    spaced = PromptPair(pairs[0].base, pairs[0].source, pairs[0].base_answer, pairs[0].source_answer)
    with pytest.raises(UsageError, match="mix answers that follow a space"):
        tokenize_pairs(model, [pairs[0], spaced])


def test_greater_than_prompts_are_those_drawn_before_answers_were_joined(embedded_tokenizer):
    # the first pairs of seed 0 as the task drew them before it took a tokenizer (b8737d9)
    before = [("The treaty lasted from the year 1151 to the year 11", "The treaty lasted from the year 1101 to the year 11",
               "52"),
              ("The campaign lasted from the year 1435 to the year 14",
               "The campaign lasted from the year 1401 to the year 14", "36"),
              ("The campaign lasted from the year 1340 to the year 13",
               "The campaign lasted from the year 1301 to the year 13", "41")]
    for tok in (None, embedded_tokenizer):
        pairs = nr.tasks.get_task("greater_than").pairs(n_prompts=3, seed=0, tokenizer=tok)
        assert [(p.base, p.source, p.base_answer) for p in pairs] == before
        assert [(e.prompt, e.answer) for e in nr.tasks.examples("greater_than", n_prompts=3, seed=0, tokenizer=tok)] \
            == [(b, a) for b, _, a in before]


def test_a_tokenizer_without_drawable_years_is_refused():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from nnsight_reasoning.tasks import TaskError

    # only 00, 01 and 99 are digit pairs: every century's valid years are XX01 at most, outside 02..98
    vocab = {"<|endoftext|>": 0}
    for c in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[c] = len(vocab)
    merges = [(d[0], d[1]) for d in ("00", "01", "99")] + [("Ġ", d) for d in ("00", "01", "99")] + [("Ġ", "1")] + \
        [("Ġ1", str(c % 10)) for c in range(11, 18)]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    import signal

    def hung(*_):  # a regression would redraw for ever: fail instead
        raise AssertionError("greater-than pairs kept redrawing")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    try:
        with pytest.raises(TaskError, match="writes no year"):
            nr.tasks.get_task("greater_than").pairs(n_prompts=2, tokenizer=tok)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_circuit_and_training_read_the_joined_answers(year_bpe):
    model, hf, tok = year_bpe
    pairs = _pairs(model, 5, seed=2)
    ds = nr.circuit(model, pairs, ig_steps=1, sizes=(), progress=False)  # greater-than's prob_diff
    for k, p in enumerate(pairs):
        good = [tok(a)["input_ids"][0] for a in (p.base_answer, *p.alternatives)]
        bad = [tok(a)["input_ids"][0] for a in p.distractors]
        for text, var in ((p.base, "clean_logit_diff"), (p.source, "corrupt_logit_diff")):
            with torch.no_grad():
                probs = hf(torch.tensor([tok(text)["input_ids"]])).logits[0, -1].double().softmax(-1)
            assert float(ds[var][k]) == pytest.approx(float(probs[good].sum() - probs[bad].sum()), abs=1e-6)
    from nnsight_reasoning.tasks import get_task
    from nnsight_reasoning.training import _batch

    batch = _batch(get_task("greater_than"), tok, model, 0, 4, 0, {})
    examples = get_task("greater_than").examples(4, seed=0, tokenizer=tok)
    for e, row in zip(examples, batch[2]):  # (rows, mask, targets)
        assert row[row != -100].tolist() == [tok(e.answer)["input_ids"][0]]  # "33", not " 33"


def test_training_continues_a_joined_answer_of_several_tokens(year_bpe, monkeypatch):
    # an answer of several tokens follows its prompt in the row; a joined one with no space before it
    model, _, tok = year_bpe
    from nnsight_reasoning import backend
    from nnsight_reasoning.tasks import get_task
    from nnsight_reasoning.training import _batch

    monkeypatch.setattr(backend, "answer_token", lambda *a, **k: None)  # as if no answer were one token
    rows, _, targets = _batch(get_task("greater_than"), tok, model, 0, 3, 0, {})
    for e, row, target in zip(get_task("greater_than").examples(3, seed=0, tokenizer=tok), rows, targets):
        full = tok(e.prompt + e.answer)["input_ids"]  # "… the year 17" + "33": the year written whole
        n = len(tok(e.prompt)["input_ids"])
        assert row[:len(full) - 1].tolist() == full[:-1] and target[target != -100].tolist() == full[n:]


def test_the_embedded_tokenizer_draws_the_same_greater_than_prompts(embedded_tokenizer):
    # every year is one the embedded tokenizer splits as century + YY: a tokenizer changes no draw
    plain = nr.tasks.get_task("greater_than").pairs(n_prompts=40, seed=5)
    given = nr.tasks.get_task("greater_than").pairs(n_prompts=40, seed=5, tokenizer=embedded_tokenizer)
    assert plain.pairs == given.pairs
    assert nr.tasks.examples("greater_than", n_prompts=40, seed=5).examples == \
        nr.tasks.examples("greater_than", n_prompts=40, seed=5, tokenizer=embedded_tokenizer).examples


def _reference(hf, ids, years):
    """For one prompt at its last position: attention probabilities (L, H, T), every head's and
    MLP's direct effect on the ``years`` tokens, (L, H, 100) and (L, 100)."""
    layers_path, _, _, o_path, _, mlp_path, final_path, _ = NORMS[hf.config.model_type]
    n_heads = hf.config.num_attention_heads
    hd = hf.config.hidden_size // n_heads
    blocks, final = _get(hf, layers_path), _get(hf, final_path)
    z, m, f, hooks = {}, {}, {}, []
    for li, block in enumerate(blocks):
        hooks.append(_get(block, o_path).register_forward_pre_hook(
            lambda mod, args, li=li: z.__setitem__(li, args[0][0, -1].double())))
        hooks.append(_get(block, mlp_path).register_forward_hook(
            lambda mod, args, out, li=li: m.__setitem__(li, (out[0] if isinstance(out, tuple) else out)[0, -1]
                                                        .double())))
    hooks.append(final.register_forward_pre_hook(lambda mod, args: f.__setitem__("x", args[0][0, -1].double())))
    try:
        with torch.no_grad():
            out = hf(torch.tensor([ids]), output_attentions=True)
    finally:
        for h in hooks:
            h.remove()
    probs = torch.stack([a[0, :, -1] for a in out.attentions]).double().numpy()  # (L, H, T)
    layer_norm = isinstance(final, torch.nn.LayerNorm)
    x = f["x"] - f["x"].mean() if layer_norm else f["x"]
    eps = final.eps if layer_norm else final.variance_epsilon
    scale = (x.pow(2).mean() + eps).sqrt()
    rows = final.weight.detach().double() * hf.get_output_embeddings().weight.detach().double()[years]  # (100, d)

    def read(o):
        return ((o - o.mean(-1, keepdim=True) if layer_norm else o) / scale) @ rows.T

    heads = np.zeros((len(blocks), n_heads, len(years)))
    for li, block in enumerate(blocks):
        w = _get(block, o_path).weight.detach().double()
        for h in range(n_heads):
            zh = z[li][h * hd:(h + 1) * hd]
            o = zh @ w[h * hd:(h + 1) * hd] if hf.config.model_type == "gpt2" else w[:, h * hd:(h + 1) * hd] @ zh
            heads[li, h] = read(o).numpy()
    mlps = np.stack([read(m[li]).numpy() for li in range(len(blocks))])
    return probs, heads, mlps


@pytest.mark.parametrize("name", ["embedded", "gpt2", "year_bpe"])
def test_greater_than_components_match_the_hook_reference(case_model, year_bpe, name):
    model, hf = (year_bpe[0], year_bpe[1]) if name == "year_bpe" else case_model(name)
    tok = model.tokenizer
    pairs = _pairs(model, 8)
    ds = nr.greater_than_components(model, pairs, progress=False)
    nr.testing.assert_valid_result(ds)
    years = [tok(f"{y:02d}", add_special_tokens=False)["input_ids"][0] for y in range(100)]
    peak, prob, copies, diff, yy_at = [], [], [], [], []
    for p in pairs:
        ids, src = tok(p.base)["input_ids"], tok(p.source)["input_ids"]
        at = [i for i, (a, b) in enumerate(zip(ids, src)) if a != b]
        yy = int(p.base.split()[-5][2:])
        # the token is YY, read as text, and it ends the start year ("… the year 17|32")
        start = p.base.split()[-5]
        assert tok.decode(ids[at[0]]).strip() == f"{yy:02d}" and tok.decode(ids[:at[0] + 1]).replace(" ", "").endswith(start)
        probs, heads, mlps = _reference(hf, ids, years)
        peak.append(probs.argmax(-1) == at[0])
        prob.append(probs[..., at[0]])
        top = heads.argmax(-1)
        copies.append((top == yy) | (top == yy + 1))
        diff.append(mlps[:, yy + 1:].mean(-1) - mlps[:, :yy + 1].mean(-1))
        yy_at.append((yy, at[0]))
    np.testing.assert_array_equal(np.c_[ds.start_year.values, ds.yy_position.values], yy_at)
    np.testing.assert_allclose(ds.yy_attention.values, np.mean(peak, 0))
    np.testing.assert_allclose(ds.yy_attention_prob.values, np.mean(prob, 0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ds.yy_logit.values, np.mean(copies, 0))
    np.testing.assert_allclose(ds.mlp_logit_diff.values, np.mean(diff, 0), rtol=1e-4, atol=1e-5)
    assert np.abs(ds.mlp_logit_diff.values).max() > 1e-3  # a read of nothing could not fail


def _circuit(model, edges, qkv=False):
    """An (upstream, downstream) 0/1 DataArray of this model's graph (EAP-IG's q/k/v graph with
    ``qkv``) with ``edges`` (names) set."""
    from nnsight_reasoning.experiments.circuit import Shape, node_table

    shape = Shape.of(model, qkv=qkv)
    up, down = node_table(shape.n_layers, shape.n_heads, qkv=qkv)
    a = np.zeros(shape.valid.shape, np.int8)
    for u, v in edges:
        a[up["name"].index(u), down["name"].index(v)] = 1
    return xr.DataArray(a, dims=("upstream", "downstream"),
                        coords={"upstream": up["name"], "downstream": down["name"],
                                "upstream_kind": ("upstream", up["kind"]), "upstream_layer": ("upstream", up["layer"]),
                                "upstream_head": ("upstream", up["head"]),
                                "downstream_kind": ("downstream", down["kind"]),
                                "downstream_layer": ("downstream", down["layer"]),
                                "downstream_head": ("downstream", down["head"])})


def test_a_circuit_marks_its_mlps_into_the_logits_and_the_heads_feeding_them(embedded_model):
    pairs = _pairs(embedded_model, 6)
    circ = _circuit(embedded_model, [("m3", "logits"), ("m1", "logits"), ("a1.2", "m3"), ("a0.1", "m1"),
                                     ("a2.0", "logits"), ("a1.0", "m2"), ("m2", "m3")])
    ds = nr.greater_than_components(embedded_model, pairs, circuit=circ, progress=False)
    np.testing.assert_array_equal(ds.in_circuit_mlp.values, [0, 1, 0, 1])
    heads = np.zeros((4, 4), np.int8)
    heads[1, 2] = heads[0, 1] = 1  # a2.0 feeds the logits, a1.0 an MLP outside: neither is counted
    np.testing.assert_array_equal(ds.in_circuit_head.values, heads)
    assert float(ds.circuit_yy_attention) == pytest.approx(float(ds.yy_attention.values[heads == 1].mean()))
    assert float(ds.circuit_yy_logit) == pytest.approx(float(ds.yy_logit.values[heads == 1].mean()))
    assert float(ds.circuit_mlp_logit_diff) == pytest.approx(float(ds.mlp_logit_diff.values[[1, 3]].mean()))
    qkv = _circuit(embedded_model, [("m3", "logits"), ("m1", "logits"), ("a1.2", "m3"), ("a0.1", "m1"),
                                    ("a2.0", "logits"), ("a1.0", "m2"), ("a1.1", "a2.0<q>")], qkv=True)
    same = nr.greater_than_components(embedded_model, pairs, circuit=qkv, progress=False)
    for v in ("in_circuit_mlp", "in_circuit_head", "circuit_yy_logit"):  # EAP-IG's graph: the same components
        np.testing.assert_array_equal(same[v].values, ds[v].values)
    alone = nr.greater_than_components(embedded_model, pairs, circuit=_circuit(embedded_model, [("a3.0", "logits")]),
                                       progress=False)
    assert alone.in_circuit_mlp.values.sum() == 0 and np.isnan(float(alone.circuit_mlp_logit_diff))


def test_a_sweep_reads_each_checkpoint_with_its_own_circuit(embedded_model):
    pairs = _pairs(embedded_model, 4)
    own = {"step512": _circuit(embedded_model, [("m2", "logits"), ("a1.0", "m2")]),
           "main": _circuit(embedded_model, [("m3", "logits"), ("a2.1", "m3")])}
    per = xr.concat(list(own.values()), "checkpoint").assign_coords(checkpoint=list(own))
    ds = nr.greater_than_components("embedded", pairs, circuit=per, revisions="step512,main", progress=False)
    for rev, circ in own.items():
        one = nr.greater_than_components(nr.load_model(revision=rev), pairs, circuit=circ, progress=False)
        for v in ("in_circuit_mlp", "in_circuit_head", "yy_attention", "mlp_logit_diff", "circuit_yy_logit"):
            np.testing.assert_array_equal(ds[v].sel(checkpoint=rev).values, one[v].values)
    assert ds.in_circuit_mlp.sel(checkpoint="step512").values.tolist() == [0, 0, 1, 0]
    # a run on one revision reads that revision's; a revision the option lacks is refused before any pass
    main = nr.greater_than_components(embedded_model, pairs, circuit=per, progress=False)
    np.testing.assert_array_equal(main.in_circuit_mlp.values, [0, 0, 0, 1])
    with pytest.raises(UsageError, match="circuit is given per checkpoint .* no value for revision 'step0'"):
        nr.greater_than_components("embedded", pairs, circuit=per, revisions="step0,main", progress=False)


def test_greater_than_components_bad_input(embedded_model, small_pairs):
    with pytest.raises(UsageError, match="needs greater-than pairs"):
        nr.greater_than_components(embedded_model, small_pairs, progress=False)
    with pytest.raises(UsageError, match="circuit must be an"):
        nr.greater_than_components(embedded_model, _pairs(embedded_model, 2), circuit=np.ones((3, 3)), progress=False)
    with pytest.raises(UsageError, match="reads the model's weights"):
        nr.greater_than_components(embedded_model, _pairs(embedded_model, 2), remote="https://ndif.example",
                                   progress=False)


def test_cli_greater_than_components_with_a_circuit_sweep(tmp_path, monkeypatch):
    from .clirun import in_process

    monkeypatch.chdir(tmp_path)
    res = in_process(["circuit", "--task", "greater_than", "--n-prompts", "8", "--ig-steps", "1", "--sizes", "20",
                      "--revisions", "step512,main", "--out", "c.nc", "--no-progress"])
    assert res.returncode == 0, res.output
    circ = nr.load_result(tmp_path / "c.nc")
    res = in_process(["greater-than-components", "--n-prompts", "20", "--circuit", "c.nc", "--revisions",
                      "step512,main", "--out", "g.nc", "--no-progress"])
    assert res.returncode == 0 and "step512: circuit MLPs" in res.output, res.output
    ds = nr.load_result(tmp_path / "g.nc")
    nr.testing.assert_valid_result(ds)
    for rev in ("step512", "main"):  # each checkpoint's own 20-edge circuit
        edges = circ.in_circuit.sel(checkpoint=rev, size=20).values
        mlps = [int(edges[list(circ.upstream.values).index(f"m{k}"), -1]) for k in range(4)]
        assert ds.in_circuit_mlp.sel(checkpoint=rev).values.tolist() == mlps
    fig = nr.plot_result(ds)
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), ds.yy_attention.sel(checkpoint="main"))
    res = in_process(["greater-than-components", "--n-prompts", "20", "--circuit", "c.nc", "--revision", "step512",
                      "--out", "one.nc", "--no-progress"])  # one revision: that checkpoint's circuit of the file
    assert res.returncode == 0, res.output
    np.testing.assert_array_equal(nr.load_result(tmp_path / "one.nc").in_circuit_mlp.values,
                                  ds.in_circuit_mlp.sel(checkpoint="step512").values)
    res = in_process(["greater-than-components", "--circuit", "c.nc", "--revision", "step1000", "--no-progress"])
    assert res.returncode == 2 and "has no checkpoint 'step1000'" in res.output, res.output
    res = in_process(["circuit", "--task", "ioi", "--n-prompts", "4", "--ig-steps", "1", "--sizes", "10", "--out",
                      "ioi.nc", "--no-progress"])
    assert res.returncode == 0, res.output
    res = in_process(["greater-than-components", "--circuit", "ioi.nc", "--no-progress"])
    assert res.returncode == 2 and "a circuit of the 'ioi' task" in res.output, res.output
    res = in_process(["greater-than-components", "--circuit", "g.nc", "--no-progress"])
    assert res.returncode == 2 and "is not a circuit result" in res.output
    res = in_process(["greater-than-components", "--circuit", "c.nc", "--revisions", "step0,main", "--no-progress"])
    assert res.returncode == 2 and "no value for revision 'step0'" in res.output


def test_selected_circuit_is_the_search_s_stop_size_where_it_found_none(embedded_model):
    from nnsight_reasoning.experiments.circuit import extract, selected_circuit

    pairs = _pairs(embedded_model, 6)
    # no circuit of 5 … 30 edges keeps 100 times the clean probability difference
    ds = nr.circuit(embedded_model, pairs, ig_steps=1, sizes=(), min_fraction=100.0, search=(5, 30, 5),
                    progress=False)
    assert int(ds.min_size) == -1 and int(ds.min_circuit.sum()) == 0
    stop = extract(ds.score.values, 30, "topn")
    assert stop.sum() > 0 and (stop != extract(ds.score.values, 25, "topn")).any()
    np.testing.assert_array_equal(selected_circuit(ds).values, stop)
    found = nr.circuit(embedded_model, pairs, ig_steps=1, sizes=(20,), min_fraction=0.5, search=(5, 60, 5),
                       progress=False)
    assert int(found.min_size) > 0
    np.testing.assert_array_equal(selected_circuit(found).values, found.min_circuit.values)
    plain = nr.circuit(embedded_model, pairs, ig_steps=1, sizes=(5, 20, 200), progress=False)
    size = next(int(s) for s, f in zip(plain["size"].values, plain.faithfulness.values) if f >= 0.8)
    np.testing.assert_array_equal(selected_circuit(plain).values, plain.in_circuit.sel(size=size).values)


def test_resume_configs_tell_circuits_apart_by_every_edge():
    from nnsight_reasoning.runner import _configured

    a = xr.DataArray(np.zeros((157, 157), np.int8), dims=("upstream", "downstream"))
    b = a.copy()
    b[80, 80] = 1  # a graph the size of Pythia-160m's: its text form is cut short, so only a digest sees this
    assert str(a) == str(b) and _configured(a) != _configured(b)
    assert _configured(a) == _configured(a.copy())
    # the same circuit in memory (object strings, int8) and read back from a file (fixed-width, int64)
    names = np.array([f"a{i}" for i in range(157)], dtype=object)
    mem = a.assign_coords(upstream=names, downstream=names)
    read = xr.DataArray(a.values.astype(np.int64), dims=a.dims,
                        coords={"upstream": names.astype(str), "downstream": names.astype(str)})
    assert _configured(mem) == _configured(read) != _configured(b.assign_coords(upstream=names, downstream=names))
