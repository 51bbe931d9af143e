"""Rai & Yao's pipeline with the model writing its own chain of thought (``nr.cot_generation``,
``reason-interp neurons --generate``), against an independent greedy loop in plain PyTorch:
one unpadded row at a time, the whole sequence recomputed at every step (no key/value cache),
neurons read and set by forward hooks, and the weight-noise ablation made as the repository
makes it, by adding the noise to the output weight's columns of a copy of the model."""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

import nnsight_reasoning as nr
from nnsight_reasoning import embedded
from nnsight_reasoning.backend import generation as bg
from nnsight_reasoning.cli.main import app
from nnsight_reasoning.errors import UsageError
from nnsight_reasoning.tasks import TaskError
from nnsight_reasoning.tasks.cot_generation import SHIPPED, STYLES, build_prompt, parse_answer, read_exemplars

LAYERS = {"gpt_neox": "gpt_neox.layers", "llama": "model.layers", "gpt2": "transformer.h"}
DOWN = {"gpt_neox": "mlp.dense_4h_to_h", "llama": "mlp.down_proj", "gpt2": "mlp.c_proj"}
FINAL = {"gpt_neox": "gpt_neox.final_layer_norm", "llama": "model.norm", "gpt2": "transformer.ln_f"}


def _get(root, dotted):
    for part in dotted.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


def _proj(hf, layer):
    return _get(_get(hf, LAYERS[hf.config.model_type])[layer], DOWN[hf.config.model_type])


def _directions(hf, layer):
    """(N, d): neuron n's output direction, from calling the projection on unit vectors."""
    proj = _proj(hf, layer)
    n = proj.weight.shape[0] if hf.config.model_type == "gpt2" else proj.weight.shape[1]
    with torch.no_grad():
        eye = torch.eye(n, dtype=proj.weight.dtype)
        return (proj(eye) - proj(torch.zeros(1, n, dtype=proj.weight.dtype))).double()


def reference(hf, ids, steps, *, units=(), set_=None, noise=None, eos=None):
    """Greedy continuation of one unpadded row: tokens, per step each layer's activations at the
    last position (L, N), the final norm's input there, and the recorded units."""
    model = hf
    if noise:  # the repository's way: the noise is added to the weight's columns
        model = copy.deepcopy(hf)
        for layer, (idx, eps) in noise.items():
            w = _proj(model, layer).weight
            with torch.no_grad():
                if model.config.model_type == "gpt2":  # Conv1D stores (in, out)
                    w[idx] += eps.to(w.dtype)
                else:
                    w[:, idx] += eps.T.to(w.dtype)
    seq, out, acts, finals = list(ids), [], [], []
    n_layers = model.config.num_hidden_layers
    for _ in range(steps):
        step_acts, box, hooks = [None] * n_layers, {}, []
        for li in range(n_layers):
            def pre(m, args, li=li):
                x = args[0].clone()
                if set_ and li in set_:
                    x[..., set_[li][0]] = set_[li][1].to(x.dtype)
                step_acts[li] = x[0, -1].double()
                return (x,) + tuple(args[1:])
            hooks.append(_proj(model, li).register_forward_pre_hook(pre))
        hooks.append(_get(model, FINAL[model.config.model_type]).register_forward_hook(
            lambda m, i, o: box.update(f=i[0][0, -1].double())))
        try:
            with torch.no_grad():
                logits = model(torch.tensor([seq])).logits[0, -1]
        finally:
            for h in hooks:
                h.remove()
        token = int(logits.argmax())
        out.append(token)
        acts.append(torch.stack(step_acts))
        finals.append((box["f"], token))
        seq.append(token)
    rec = torch.tensor([[float(a[li, nn]) for li, nn in units] for a in acts])
    return out, acts, finals, rec


@torch.no_grad()
def _scores(hf, acts, finals, ranking):
    """(S, L, N) ranking scores from the reference's activations."""
    n_layers = len(acts[0])
    dirs = [_directions(hf, li) for li in range(n_layers)]
    if ranking == "algorithm_one":
        return torch.stack([a.abs() * torch.stack([d.norm(dim=-1) for d in dirs]) for a in acts])
    norm = _get(hf, FINAL[hf.config.model_type])
    u = hf.get_output_embeddings().weight.double()
    out = []
    for a, (f, token) in zip(acts, finals):
        layer_norm = isinstance(norm, torch.nn.LayerNorm)
        eps = norm.eps if layer_norm else norm.variance_epsilon
        g = norm.weight.double()
        fc = f - f.mean() if layer_norm else f
        s = torch.sqrt(fc.pow(2).mean() + eps)
        v = g * (u[token] - u.mean(0))
        per = []
        for li in range(n_layers):
            d = dirs[li] - dirs[li].mean(-1, keepdim=True) if layer_norm else dirs[li]
            per.append(a[li] * (d @ v) / s)
        out.append(torch.stack(per))
    return torch.stack(out)


def _hf(path):
    return AutoModelForCausalLM.from_pretrained(path).eval()


@pytest.fixture(scope="module")
def llama(tiny_model_dir):
    path = tiny_model_dir("llama")
    return nr.load_model(str(path)), _hf(path)


@pytest.fixture(scope="module")
def neox(embedded_model):
    return embedded_model, _hf(embedded.revision_path("main"))


@pytest.mark.parametrize("which", ["neox", "llama"])
@pytest.mark.parametrize("ranking", ["algorithm_one", "direct_contribution"])
def test_generation_equals_plain_greedy_loop(which, ranking, request):
    model, hf = request.getfixturevalue(which)
    rng = np.random.default_rng(1)
    rows = [rng.integers(3, 600, size=n).tolist() for n in (5, 9, 7)]  # different lengths: left padding
    units = [(0, 3), (1, 17), (1, 2)]
    g = bg.generate(model, rows, 6, ranking=ranking, top_k=5, units=units)
    assert g.tokens.shape == (3, 6) and g.top_neurons.shape == (3, 6, hf.config.num_hidden_layers, 5)
    for r, row in enumerate(rows):
        tokens, acts, finals, rec = reference(hf, row, 6, units=units)
        assert g.tokens[r].tolist() == tokens
        full = _scores(hf, acts, finals, ranking)  # (S, L, N)
        got_at = torch.gather(full, 2, g.top_neurons[r])  # the reference's scores of the chosen neurons
        scale = float(full.abs().max())
        np.testing.assert_allclose(g.top_scores[r].numpy(), got_at.numpy(), rtol=1e-5, atol=1e-6 * scale)
        np.testing.assert_allclose(g.top_scores[r].numpy(), full.topk(5, -1).values.numpy(), rtol=1e-5,
                                   atol=1e-6 * scale)
        # float32: the cached and the recomputed passes sum in other orders (~1e-7 of the layer's scale)
        np.testing.assert_allclose(g.activations[r].numpy(), rec.numpy(), rtol=1e-5,
                                   atol=1e-5 * float(torch.stack(acts).abs().max()))


@pytest.mark.parametrize("which", ["neox", "llama"])
def test_edits_during_generation_equal_hooks_and_noisy_weights(which, request):
    model, hf = request.getfixturevalue(which)
    rng = np.random.default_rng(2)
    rows = [rng.integers(3, 600, size=n).tolist() for n in (6, 4)]
    d = hf.config.hidden_size
    eps = torch.tensor(rng.normal(-1, 1, size=(2, d)), dtype=torch.float32) * 3
    idx = torch.tensor([5, 11])
    values = torch.tensor([2.5, -1.0])
    edits = [bg.Edit(1, set_neurons=idx, set_values=values), bg.Edit(0, noise_neurons=idx, noise=eps)]
    g = bg.generate(model, rows, 5, units=[(1, 5), (0, 11)], edits=edits)
    clean = bg.generate(model, rows, 5)
    for r, row in enumerate(rows):
        tokens, acts, _, rec = reference(hf, row, 5, units=[(1, 5), (0, 11)], set_={1: (idx, values)},
                                         noise={0: (idx, eps)})
        assert g.tokens[r].tolist() == tokens
        np.testing.assert_allclose(g.activations[r].numpy(), rec.numpy(), rtol=1e-5,
                                   atol=1e-5 * float(torch.stack(acts).abs().max()))
        np.testing.assert_allclose(g.activations[r, :, 0].numpy(), 2.5)  # the set value is what the layer reads
    assert not torch.equal(g.tokens, clean.tokens)  # the edits change the continuation (else this tests nothing)


def test_remote_local_path_equals_local(neox):
    model, _ = neox
    rows = [[0, 340, 220, 368, 494, 7], [0, 340, 220, 368]]
    edit = [bg.Edit(2, noise_neurons=torch.tensor([1, 9]), noise=torch.ones(2, 128))]
    a = bg.generate(model, rows, 4, ranking="algorithm_one", top_k=3, units=[(3, 2)], edits=edit)
    b = bg.generate(model, rows, 4, ranking="algorithm_one", top_k=3, units=[(3, 2)], edits=edit, remote="local")
    for x, y in zip(dataclasses.astuple(a), dataclasses.astuple(b)):
        torch.testing.assert_close(x, y)


# --------------------------------------------------------------------------- prompts and answers
def test_parse_answer_follows_the_repository():
    rep = STYLES["repository"]
    assert parse_answer("First 3 + 2 = 5.\nThe answer is 5.\n\nQuestion: Tom has 7", rep) == 5
    assert parse_answer("So 74 - 35 = 39.\nThe answer is $1,200 dollars.\n\nQuestion: 9", rep) == 1200
    assert parse_answer("The answer is 6. The answer is 8.", rep) == 6  # the first phrase
    assert parse_answer("no number here\n\nQuestion: 4", rep) is None
    # strict, as gsm8k_inference.py:100-120: no phrase, or a last word that is not a number, is no
    # answer (the repository's 234234); "The answer is:" is not the phrase; the phrase is found
    # before the text is cut at the next question
    assert parse_answer("Natalia sold 48/2 = 24 clips.\n#### 72", rep) is None
    assert parse_answer("So he earns $18 every day.\n\nQuestion: 4", rep) is None
    assert parse_answer("The answer is 18 (dollars).", rep) is None
    assert parse_answer("The answer is: 18. The answer is 7.", rep) == 7
    assert parse_answer("\n\nQuestion: Tom has 2. The answer is 5.", rep) == 5
    assert parse_answer("The answer is " + "9" * 400, rep) is None  # int(float(...)) overflows: no answer
    emb = STYLES["embedded"]  # the toolkit's own style reads leniently
    assert parse_answer("5 + 3 = 8 . The result is 8 . Q : Tom had 3", emb) == 8
    assert parse_answer("5 + 3 = 8 . Q : The result is 4", emb) == 8  # the next exemplar is not read
    assert parse_answer("Natalia sold 48/2 = 24 clips.\n#### 72", emb) == 72  # GSM8K's mark


def test_exemplar_files_are_read_as_the_repository_reads_them(tmp_path):
    (tmp_path / "cot_prompt.txt").write_text("Question: A has 2. B gives 3.  \n  Let's think step by step\n"
                                             "2 + 3 = 5.\nThe answer is 5.\n\n")
    (tmp_path / "equation_only.txt").write_text("Question: A has 2.\n2 + 3 = 5.\nThe answer is 5.\n")
    rep = STYLES["repository"]
    text = read_exemplars("cot", tmp_path)
    # utils.read_file strips each line; the caller joins them with newlines and adds a blank line
    with open(tmp_path / "cot_prompt.txt") as f:
        assert text == "\n".join(line.strip() for line in f) + "\n\n"
    assert text.startswith("Question: A has 2. B gives 3.\nLet's think step by step\n")
    assert build_prompt(text, "How   many?", "cot", rep) == text + "Question: How many?\nLet's think step by step\n"
    eq = read_exemplars("equation_only", tmp_path)
    assert build_prompt(eq, "How many?", "equation_only", rep) == eq + "Question: How many?\n\n"
    assert build_prompt("", "How many?", "zero_shot", rep) == "Q: How many? A: Let's think step by step."
    # the accuracy script's prompt: 'Q: ' + question + " A: " + its --prompt flag (gsm8k_inference.py:204)
    assert build_prompt("", "How   many?", "zero_shot", rep, "Let's think step by step") == \
        "Q: How many? A: Let's think step by step"
    assert build_prompt("", "How many?", "zero_shot", STYLES["embedded"]) == "Q : How many? A :"
    assert build_prompt("", "How many?", "zero_shot", STYLES["embedded"], "Think .") == "Q : How many? A : Think ."
    zs = nr.tasks.cot_generation(2, ["zero_shot", "cot"], style="repository", prompts_dir=tmp_path,
                                 trigger="Let's solve it.", seed=1)
    assert zs.prompts["zero_shot"][0].prompt.endswith(" A: Let's solve it.") and zs.params["trigger"] == "Let's solve it."
    assert "trigger" not in nr.tasks.cot_generation(2, ["zero_shot"], style="repository", seed=1).params
    with pytest.raises(TaskError, match="add zero_shot to the prompt types"):
        nr.tasks.cot_generation(2, ["cot"], trigger="Let's think")
    data = nr.tasks.cot_generation(3, ["cot", "equation_only"], style="repository", prompts_dir=tmp_path)
    assert data.prompts["cot"][1].prompt.startswith(text + "Question: ")
    with pytest.raises(TaskError, match="text_only.txt"):
        nr.tasks.cot_generation(3, ["text_only"], style="repository", prompts_dir=tmp_path)
    with pytest.raises(TaskError, match="mult_only"):
        nr.tasks.cot_generation(3, ["mult_only"])  # no × in the embedded vocabulary
    with pytest.raises(TaskError, match="unknown prompt type"):
        nr.tasks.cot_generation(3, ["nope"])


def test_shipped_exemplars_use_the_embedded_vocabulary(embedded_tokenizer):
    unk = embedded_tokenizer.unk_token_id
    for v in ("cot", "text_only", "equation_only", "add_only", "incorrect_label", "incorrect_ood_label", "repeat",
              "standard"):
        ids = embedded_tokenizer(read_exemplars(v))["input_ids"]
        assert unk not in ids, v


# --------------------------------------------------------------------------- the whole pipeline
def _read_until(tok, tokens):
    """Steps read, on the word-level embedded tokenizer: the tokens before "Q :" (a new exemplar)
    or before a second "The result is"."""
    words = [tok.decode([t]).strip() for t in tokens]
    phrase = [k for k in range(len(words)) if words[k:k + 3] == ["The", "result", "is"]]
    ends = [k for k in range(len(words)) if words[k:k + 2] == ["Q", ":"]] + phrase[1:2]
    return min(ends, default=len(words))


def _own_answers(model, hf, data, steps):
    """The data with each gold answer replaced by the model's own parsed answer, so that every
    prompt counts as correct and discovery has steps to count (the model is not trained to
    write chains of thought; the test is about the computation)."""
    style, prompts = data.style, {}
    for v, ps in data.prompts.items():
        new = []
        for p in ps:
            ids = model.tokenizer(p.prompt)["input_ids"]
            tokens, *_ = reference(hf, ids, steps)
            got = parse_answer(model.tokenizer.decode(tokens), style)
            new.append(dataclasses.replace(p, answer=str(got if got is not None else 0)))
        prompts[v] = tuple(new)
    return dataclasses.replace(data, prompts=prompts)


@pytest.mark.parametrize("which,types", [("neox", ["equation_only", "cot"]), ("llama", ["standard", "zero_shot"])])
def test_pipeline_every_number_against_the_reference(which, types, request):
    """The tiny Llama's context is 128 tokens: its prompt types are the short ones."""
    model, hf = request.getfixturevalue(which)
    S = 10
    data = _own_answers(model, hf, nr.tasks.cot_generation(3, types, seed=4), S)
    ds = nr.cot_generation(model, data, discover_on=types[0], max_new_tokens=S, top_k=4, select="frequency",
                           min_frequency=0.3, ablations=("noise", "zero", "mean", "random", "random_zero"), seed=1,
                           progress=False, batch_size=2)
    assert list(ds["variant"].values) == types
    tok, style = model.tokenizer, data.style
    pairs = list(zip(ds["unit_layer"].values.tolist(), ds["unit_neuron"].values.tolist()))
    assert pairs
    n_read = ds["n_read"].values
    counts = {}
    for vi, v in enumerate(ds["variant"].values):
        for i, p in enumerate(data.prompts[str(v)]):
            ids = tok(p.prompt)["input_ids"]
            tokens, acts, finals, rec = reference(hf, ids, S, units=pairs)
            text = tok.decode(tokens)
            assert ds["generated"].values[0, vi, i] == text
            assert ds["predicted"].values[0, vi, i] == parse_answer(text, style)
            stop = _read_until(tok, tokens)
            assert n_read[vi, i] == stop
            np.testing.assert_allclose(ds["activation"].values[vi, i, :stop], rec[:stop].numpy(), rtol=1e-5,
                                       atol=1e-5 * float(torch.stack(acts).abs().max()))
            assert np.isnan(ds["activation"].values[vi, i, stop:]).all()
            full = _scores(hf, acts, finals, "algorithm_one")
            np.testing.assert_allclose(ds["top_score"].values[vi, i], full.topk(4, -1).values.numpy(), rtol=1e-5)
            if vi == 0:  # discovery counts every ranked neuron on the read steps (all prompts correct here)
                for s in range(stop):
                    for li in range(full.shape[1]):
                        for nn in ds["top_neuron"].values[vi, i, s, li]:
                            counts[(li, int(nn))] = counts.get((li, int(nn)), 0) + 1
    total = n_read[0].sum()
    cand = list(zip(ds["candidate_layer"].values.tolist(), ds["candidate_neuron"].values.tolist()))
    assert set(cand) == set(counts)
    np.testing.assert_allclose(ds["candidate_frequency"].values, [counts[u] / total for u in cand])
    assert pairs == [u for u in cand if counts[u] / total >= 0.3]
    np.testing.assert_allclose(ds["frequency"].values, [counts[u] / total for u in pairs])
    # mean activation per prompt type; the mean ablation's value from the discovery type's read steps
    act = ds["activation"].values
    np.testing.assert_allclose(ds["mean_activation"].values, np.nanmean(act, axis=(1, 2)))
    np.testing.assert_allclose(ds["ablation_value"].values, np.nanmean(act[0], axis=(0, 1)))
    # each ablation: a fresh generation, against the reference with hooks or noisy weights
    rng = np.random.default_rng(1)
    eps = torch.tensor(rng.normal(-1.0, 1.0, size=(len(pairs), hf.config.hidden_size)), dtype=torch.float32)
    control = list(zip(ds["control_layer"].values.tolist(), ds["control_neuron"].values.tolist()))
    assert not set(control) & set(pairs) and [li for li, _ in control] == [li for li, _ in pairs]

    def by_layer(units, values):
        out = {}
        for layer in sorted({li for li, _ in units}):
            k = [j for j, (li, _) in enumerate(units) if li == layer]
            out[layer] = (torch.tensor([units[j][1] for j in k]), values[k])
        return out

    means = torch.tensor(ds["ablation_value"].values, dtype=torch.float32)
    kinds = {"noise": dict(noise=by_layer(pairs, eps)), "zero": dict(set_=by_layer(pairs, torch.zeros(len(pairs)))),
             "mean": dict(set_=by_layer(pairs, means)), "random": dict(noise=by_layer(control, eps)),
             "random_zero": dict(set_=by_layer(control, torch.zeros(len(pairs))))}
    changed = 0
    for kind, kw in kinds.items():
        for vi, v in enumerate(ds["variant"].values):
            for i, p in enumerate(data.prompts[str(v)]):
                tokens, *_ = reference(hf, tok(p.prompt)["input_ids"], S, **kw)
                assert ds["generated"].sel(ablation=kind).values[vi, i] == tok.decode(tokens), (kind, v, i)
                changed += ds["generated"].sel(ablation=kind).values[vi, i] != ds["generated"].values[0, vi, i]
    assert changed  # some ablation changes some continuation
    golds = np.array([[int(p.answer) for p in data.prompts[str(v)]] for v in ds["variant"].values])
    np.testing.assert_array_equal(ds["correct"].values, ds["predicted"].values == golds[None])
    np.testing.assert_allclose(ds["accuracy"].values, ds["correct"].values.mean(-1))
    own = np.array([[parse_answer(t, style) is not None for t in row] for row in ds["generated"].values[0]])
    np.testing.assert_array_equal(ds["correct"].values[0], own)  # the gold answers are the model's own


def test_concept_selection_and_errors(neox, tmp_path):
    model, hf = neox
    data = nr.tasks.cot_generation(2, ["cot"], seed=4)
    with pytest.raises(UsageError, match="no discover_on prompt correctly"):
        nr.cot_generation(model, data, max_new_tokens=4, progress=False)
    with pytest.raises(UsageError, match="not among the data's prompt types"):
        nr.cot_generation(model, data, discover_on="text_only", progress=False)
    with pytest.raises(UsageError, match="unknown ranking"):
        nr.cot_generation(model, data, ranking="nope", progress=False)
    with pytest.raises(UsageError, match="context"):
        nr.cot_generation(model, data, max_new_tokens=250, progress=False)
    with pytest.raises(UsageError, match="units is empty"):
        nr.cot_generation(model, data, units=[], progress=False)
    with pytest.raises(UsageError, match="noise_scale"):
        nr.cot_generation(model, data, noise_scale=0, progress=False)
    # GSM8K rows need only their final answer here (no <<a=b>> annotations)
    rows = tmp_path / "gsm.jsonl"
    rows.write_text('{"question": "Tom had 3 ball .", "answer": "He has 3.\\n#### 3"}\n'
                    '{"question": "Mary had 5 ball .", "answer": "#### 5"}\n')
    gsm = nr.tasks.cot_generation(2, ["cot"], data=rows)
    assert [p.answer for p in gsm.prompts["cot"]] == ["3", "5"] and gsm.prompts["cot"][0].prompt.endswith("ball .\nA :")
    # given units are measured and described by the same rule as discovered ones
    ds = nr.cot_generation(model, data, max_new_tokens=4, units=["L3N7", "L1N2"], ablations=("zero",), progress=False)
    assert ds["unit_layer"].values.tolist() == [3, 1] and ds.attrs["fixed_units"] == "L3N7,L1N2"
    assert np.isnan(ds["frequency"].values).all() and "candidate" not in ds.dims
    fig = nr.plot_result(ds, tmp_path / "gen.png")  # activation per prompt type, accuracy per ablation
    heat = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(heat, ds["mean_activation"].values)
    assert (tmp_path / "gen.png").stat().st_size > 0
    path = tmp_path / "gen.nc"
    nr.save_result(ds, path)
    back = nr.load_result(path)
    assert back["generated"].values.tolist() == ds["generated"].values.tolist()


# the repository's data/prompts.py strings that no data/prompts/ file holds (cot_prompts: Wei et al.'s exemplars,
# lines 61-120; recall_infer_prompt, 185-246); their first exemplar, as a user writes one to a file
WEI = ("Question: There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are "
       "done, there will be 21 trees. How many trees did the grove workers plant today?\nLet's think step by step\n"
       "There are 15 trees originally.\nThen there were 21 trees after some more were planted.\n"
       "So there must have been 21 - 15 = 6.\nThe answer is 6.\n\n")


def test_any_exemplar_file_is_a_prompt_type_named_by_its_stem(tmp_path):
    """gsm8k_inference.py:239-244: --prompt takes any .txt file, its stem the prompt type (and the
    blank-line end for a file named equation_only.txt, :198)."""
    (tmp_path / "wei_cot.txt").write_text(WEI)
    (tmp_path / "cot_prompt.txt").write_text("Question: A has 2.\nLet's think step by step\n2 + 3 = 5.\n"
                                             "The answer is 5.\n")
    own = tmp_path / "own"
    own.mkdir()
    (own / "equation_only.txt").write_text("Question: A has 2.\n2 + 3 = 5.\nThe answer is 5.\n")
    shipped = nr.tasks.cot_generation(3, ["cot", str(tmp_path / "wei_cot.txt"), str(own / "equation_only.txt")],
                                      style="repository", prompts_dir=tmp_path, seed=2)
    assert shipped.variants == ("cot", "wei_cot", "equation_only")
    assert shipped.params["prompt_files"] == {"wei_cot": str(tmp_path / "wei_cot.txt"),
                                              "equation_only": str(own / "equation_only.txt")}
    wei = "\n".join(line.strip() for line in WEI.splitlines()) + "\n\n"
    for p, q, e in zip(shipped.prompts["wei_cot"], shipped.prompts["cot"], shipped.prompts["equation_only"]):
        question = q.prompt.rsplit("Question: ", 1)[1]
        assert p.prompt == wei + "Question: " + question and p.variant == "wei_cot" and p.answer == q.answer
        assert e.prompt.endswith(question.replace("\nLet's think step by step\n", "\n\n"))
    # a bare name ending in .txt is looked up in prompts_dir
    assert nr.tasks.cot_generation(3, ["wei_cot.txt"], style="repository", prompts_dir=tmp_path,
                                   seed=2).prompts["wei_cot"] == shipped.prompts["wei_cot"]
    with pytest.raises(TaskError, match="no exemplar file nope.txt"):
        nr.tasks.cot_generation(3, ["nope.txt"], prompts_dir=tmp_path)
    (tmp_path / "zero_shot.txt").write_text(WEI)
    with pytest.raises(TaskError, match="rename it"):
        nr.tasks.cot_generation(3, [str(tmp_path / "zero_shot.txt")])
    with pytest.raises(TaskError, match="share a name"):
        nr.tasks.cot_generation(3, [str(own / "equation_only.txt"), "equation_only"], prompts_dir=own)


def test_cli_neurons_generate(tmp_path):
    out = tmp_path / "gen.nc"
    r = CliRunner().invoke(app, ["neurons", "--generate", "--variant", "equation_only", "--variant", "text_only",
                                 "--n-prompts", "3", "--max-new-tokens", "6", "--unit", "L3N7", "--ablation", "zero",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    ds = nr.load_result(out)
    assert list(ds["variant"].values) == ["equation_only", "text_only"] and ds.attrs["method"] == "cot_generation"
    assert "accuracy of the generated answers" in r.output
    bad = tmp_path / "bad.nc"
    r = CliRunner().invoke(app, ["neurons", "--generate", "--variant", "nope", "--out", str(bad)])
    assert r.exit_code == 2 and "unknown prompt type" in r.output and not bad.exists()
    # an exemplar file of one's own, first: the neurons are discovered on it
    mine = tmp_path / "mine.txt"
    mine.write_text((SHIPPED / "embedded" / "equation_only.txt").read_text())  # the same exemplars, another name
    out = tmp_path / "mine.nc"
    r = CliRunner().invoke(app, ["neurons", "--generate", "--variant", str(mine), "--variant", "equation_only",
                                 "--n-prompts", "3", "--max-new-tokens", "6", "--unit", "L3N7", "--out", str(out)])
    assert r.exit_code == 0, r.output
    ds = nr.load_result(out)
    assert list(ds["variant"].values) == ["mine", "equation_only"]
    for v in ("correct", "generated"):  # the same exemplars give the same generations
        np.testing.assert_array_equal(ds[v].sel(variant="mine").values, ds[v].sel(variant="equation_only").values)
    r = CliRunner().invoke(app, ["neurons", "--generate", "--variant", "equation_only", "--variant", str(mine),
                                 "--discover-on", "mine", "--n-prompts", "3", "--max-new-tokens", "6", "--unit", "L3N7",
                                 "--out", str(tmp_path / "mine2.nc")])
    assert r.exit_code == 0, r.output
    assert list(nr.load_result(tmp_path / "mine2.nc")["variant"].values) == ["mine", "equation_only"]


def test_sweep_tracks_the_units_of_the_last_revision(neox):
    model, hf = neox
    data = _own_answers(model, hf, nr.tasks.cot_generation(2, ["equation_only"], seed=5), 6)
    opts = dict(discover_on="equation_only", max_new_tokens=6, top_k=3, select="frequency", min_frequency=0.2,
                ablations=("zero",), progress=False)
    sweep = nr.cot_generation("embedded", data, revisions=["step1000", "main"], **opts)
    units = [f"L{li}N{nn}" for li, nn in zip(sweep["unit_layer"].values, sweep["unit_neuron"].values)]
    assert sweep.attrs["units_chosen_on"] == "main" and units
    for rev in ("step1000", "main"):
        one = nr.cot_generation(nr.load_model(revision=rev), data, units=units, **opts)
        got = sweep.sel(checkpoint=rev)
        assert got["generated"].values.tolist() == one["generated"].values.tolist()
        np.testing.assert_array_equal(got["activation"].values, one["activation"].values)
    # the generated tokens keep their own index beside the sweep's training step
    assert sweep["generated_token"].values.tolist() == list(range(sweep.sizes["generated_token"]))
    main_step = embedded.training_meta("main")["step"]
    assert sweep["step"].dims == ("checkpoint",) and sweep["step"].values.tolist() == [1000, main_step]


def test_files_written_with_the_old_step_dim_are_read_with_generated_token(tmp_path):
    import xarray as xr

    acts = np.arange(6.0).reshape(1, 3, 2)
    old = xr.Dataset({"activation": (("variant", "step", "unit"), acts)}, coords={"step": np.arange(3)},
                     attrs={"method": "cot_generation"})
    nr.save_result(old, tmp_path / "one.nc")
    sweep = xr.Dataset({"activation": (("checkpoint", "variant", "step", "unit"), acts[None])},  # the index was lost
                       coords={"step": ("checkpoint", [3608.0])}, attrs={"method": "cot_generation"})
    nr.save_result(sweep, tmp_path / "sweep.nc")
    for name, training_step in (("one.nc", False), ("sweep.nc", True)):
        ds = nr.load_result(tmp_path / name)
        assert ds["activation"].dims[-2] == "generated_token" and ds["generated_token"].values.tolist() == [0, 1, 2]
        np.testing.assert_array_equal(ds["activation"].values.reshape(acts.shape), acts)
        assert ("step" in ds.coords) == training_step


@pytest.fixture(scope="module")
def bpe_llama(tmp_path_factory):
    """A tiny Llama with a byte-level BPE tokenizer trained here on the repository's zero-shot
    prompts and its second question (the embedded vocabulary has no "Let's" or "Therefore")."""
    from .conftest import tiny_bpe_llama

    rep = STYLES["repository"]
    corpus = [p.prompt + rep.answer_prompt + f"{k}.\n" for k, p in
              enumerate(nr.tasks.cot_generation(200, ["zero_shot"], style="repository", seed=9).prompts["zero_shot"])]
    path = tiny_bpe_llama(tmp_path_factory.mktemp("tiny_bpe"), corpus)
    return nr.load_model(str(path)), _hf(path)


def test_zero_shot_asks_the_second_question_as_the_repository(bpe_llama):
    """gsm8k_inference.py's zero-shot pipeline: the reasoning up to the next "Q:", then
    "Therefore, the answer (arabic numerals) is ", a second generation, its last number — both
    generations under the same ablation; against two plain greedy loops."""
    from nnsight_reasoning.tasks.cot_generation import parse_zero_shot, zero_shot_followup

    model, hf = bpe_llama
    S, units = 8, [(0, 3), (1, 17)]
    data = nr.tasks.cot_generation(3, ["zero_shot"], style="repository", seed=2)
    ds = nr.cot_generation(model, data, discover_on="zero_shot", max_new_tokens=S, units=units,
                           ablations=("zero",), progress=False, batch_size=2)
    tok, style = model.tokenizer, data.style
    zero = {0: (torch.tensor([3]), torch.zeros(1)), 1: (torch.tensor([17]), torch.zeros(1))}
    for ki, kw in enumerate(({}, {"set_": zero})):
        for i, p in enumerate(data.prompts["zero_shot"]):
            first, *_ = reference(hf, tok(p.prompt)["input_ids"], S, **kw)
            text = tok.decode(first)
            assert ds["generated"].values[ki, 0, i] == text
            second = zero_shot_followup(p.prompt, text, style)
            assert second.endswith(" Therefore, the answer (arabic numerals) is ") and "\nQ:" not in second
            answer, *_ = reference(hf, tok(second)["input_ids"], S, **kw)
            assert ds["answer_generated"].values[ki, 0, i] == tok.decode(answer)
            got = parse_zero_shot(tok.decode(answer))
            assert ds["predicted"].values[ki, 0, i] == (-1 if got is None else got)
    assert parse_zero_shot(" 72.\nQ: next") == 72 and parse_zero_shot(" $1,200.\n") == 1200
    assert parse_zero_shot(" no number") is None
