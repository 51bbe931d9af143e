"""CoT arithmetic prompts and MLP neurons (Rai & Yao 2024): activations, contributions, logit
lens, discovery and ablation against plain PyTorch hooks on tiny models; the variant effect on
the embedded model; the labeller known by name (resume); fixed units and checkpoint sweeps;
the ``neurons`` CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

import nnsight_reasoning as nr
from nnsight_reasoning import embedded
from nnsight_reasoning.backend import neurons as bn
from nnsight_reasoning.cli.main import app
from nnsight_reasoning.errors import UsageError
from nnsight_reasoning.experiments import neurons as neurons_module
from nnsight_reasoning.experiments.neurons import CONCEPTS, activations, concept_matches, concept_min_layer, discover
from nnsight_reasoning.tasks import TaskError

DATA = Path(__file__).parent / "data"
DOWN = {"gpt2": "mlp.c_proj", "llama": "mlp.down_proj", "gpt_neox": "mlp.dense_4h_to_h"}


def _get(root, dotted):
    for part in dotted.split("."):
        root = getattr(root, part)
    return root


def _blocks(hf):
    return hf.transformer.h if hf.config.model_type == "gpt2" else hf.model.layers


def _final(hf):
    return hf.transformer.ln_f if hf.config.model_type == "gpt2" else hf.model.norm


def _run(hf, ids, ablate=None):
    """Last-position logits, each layer's neuron activations (T, N), the final norm's input and
    output; ``ablate`` {layer: (indices, values)} sets neurons at every position."""
    acts, box, hooks = {}, {}, []
    for li, block in enumerate(_blocks(hf)):
        def pre(m, args, li=li):
            x = args[0]
            if ablate and li in ablate:
                x = x.clone()
                x[..., ablate[li][0]] = ablate[li][1].to(x.dtype)
            acts[li] = x[0].detach().double()
            return (x,) + tuple(args[1:])
        hooks.append(_get(block, DOWN[hf.config.model_type]).register_forward_pre_hook(pre))
    hooks.append(_final(hf).register_forward_hook(lambda m, i, o: box.update(f=i[0][0].double(), y=o[0].double())))
    try:
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits[0, -1].double()
    finally:
        for h in hooks:
            h.remove()
    return logits, acts, box


def _directions(hf, layer):
    """(N, d): each neuron's output direction, from calling the projection on unit vectors."""
    proj = _get(_blocks(hf)[layer], DOWN[hf.config.model_type])
    n = proj.weight.shape[0] if hf.config.model_type == "gpt2" else proj.weight.shape[1]
    with torch.no_grad():
        return (proj(torch.eye(n)) - proj(torch.zeros(1, n))).double()


def _unembed_rows(hf, box):
    """(γ-scaled, centred unembedding, scale at the last position, centring?) from the norm's own I/O."""
    final = _final(hf)
    gamma = final.weight.detach().double()
    beta = getattr(final, "bias", None)
    center = beta is not None
    f = box["f"][-1] - box["f"][-1].mean() if center else box["f"][-1]
    normed = (box["y"][-1] - (beta.detach().double() if center else 0)) / gamma
    scale = float((f * f).sum() / (f * normed).sum())
    u = hf.get_output_embeddings().weight.detach().double()
    return gamma, u - u.mean(0), scale, center


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def tiny(request, tiny_model_dir):
    path = tiny_model_dir(request.param)
    return nr.load_model(str(path)), AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()


def test_cot_variants_share_problems_and_end_where_the_answer_is_due():
    sets = {v: nr.tasks.cot_arithmetic(30, v, n_steps=2, seed=4) for v in nr.tasks.COT_VARIANTS}
    for k in range(30):
        ps = [sets[v][k] for v in nr.tasks.COT_VARIANTS]
        assert len({p.answer for p in ps}) == 1 and len({p.problem for p in ps}) == 1
        full, text, eq, no = ps
        q = full.prompt.rsplit("Q : ", 1)[1].split(" A : ")[0]
        assert all(q in p.prompt for p in ps)  # the same question in every variant
        owner, start = q.split()[0], int(q.split()[2])
        total = start
        for sentence in q.split(" . ")[1:-1]:
            w = sentence.split()
            total += int(w[3]) if w[2] == owner else -int(w[3])
        assert str(total) == full.answer
        assert full.prompt.endswith("=") and eq.prompt.endswith("=") and text.prompt.endswith(f"{owner} had")
        assert no.prompt.endswith("A : The result is") and " = " not in text.prompt.split(" A : ")[-1]
    assert nr.tasks.cot_arithmetic(30, "full", n_steps=2, seed=4) == sets["full"]  # seeded
    with pytest.raises(TaskError, match="variant must be one of"):
        nr.tasks.cot_arithmetic(3, "tree")


def test_cot_variants_are_the_per_variant_prompts():
    data = nr.tasks.cot_variants(12, ["equation_only", "full", "equation_only"], n_steps=1, seed=4)
    assert data.task == "cot_arithmetic" and data.variants == ("equation_only", "full") and len(data) == 12
    assert data.params == {"n_prompts": 12, "variants": ["equation_only", "full"], "n_shots": 1, "n_steps": 1,
                           "seed": 4, "source": "synthetic"}
    for v in data.variants:  # exactly what the single-variant generator gives
        assert list(data.prompts[v]) == nr.tasks.cot_arithmetic(12, v, n_steps=1, seed=4)
    one = data.variant("full")
    assert one.task == "cot_arithmetic" and one.params["variant"] == "full" and list(one) == list(data.prompts["full"])
    gsm = nr.tasks.cot_variants(10, ["full", "no_cot"], n_shots=1, data=DATA / "gsm8k.jsonl")
    assert list(gsm.prompts["no_cot"]) == nr.tasks.load_gsm8k(DATA / "gsm8k.jsonl", "no_cot", n_prompts=10, n_shots=1)
    assert gsm.params["source"] == str(DATA / "gsm8k.jsonl")
    with pytest.raises(TaskError, match="unknown variant 'tree'"):
        nr.tasks.cot_variants(3, ["full", "tree"])
    with pytest.raises(TaskError, match="not in this data"):
        data.variant("no_cot")


def test_gsm8k_file_variants(tmp_path):
    full = nr.tasks.load_gsm8k(DATA / "gsm8k.jsonl", "full", n_shots=1)
    assert [p.answer for p in full] == ["72", "10", "5", "624"]
    nat = full[0].prompt.rsplit("Q : ", 1)[1]
    assert nat.endswith("A : Natalia sold 48/2 = 24 clips in May . Natalia sold 48+24 =") and "<<" not in nat
    text = nr.tasks.load_gsm8k(DATA / "gsm8k.jsonl", "text_only", n_shots=1)[0].prompt.rsplit("Q : ", 1)[1]
    assert text.endswith("A : Natalia sold 24 clips in May . Natalia sold")
    eq = nr.tasks.load_gsm8k(DATA / "gsm8k.jsonl", "equation_only", n_shots=1)[3].prompt.rsplit("Q : ", 1)[1]
    assert eq.endswith("A : 3*2 = 6 . 6*2 = 12 . 12*52 =")
    weng = nr.tasks.load_gsm8k(DATA / "gsm8k.jsonl", "full", n_shots=1)[1].prompt
    assert weng.endswith("= $10 . The answer is")  # "$10" is not " 10": the final phrase asks for it
    with pytest.raises(TaskError, match="no such file"):
        nr.tasks.load_gsm8k(DATA / "missing.jsonl")
    (tmp_path / "q.jsonl").write_text('{"question": "How many?", "solution": "#### 3"}\n')
    with pytest.raises(TaskError, match=r"q.jsonl line 1 lacks \['answer'\]"):
        nr.tasks.load_gsm8k(tmp_path / "q.jsonl")
    with pytest.raises(TaskError, match="arc.jsonl line 1: a GSM8K answer ends with '#### N'"):
        nr.tasks.load_gsm8k(DATA / "arc.jsonl")  # question/answer columns, but not GSM8K answers


def test_activations_match_hooks(tiny):
    model, hf = tiny
    prompts = nr.tasks.cot_arithmetic(5, "equation_only", n_steps=1, seed=2)
    ds = activations(model, prompts, positions="all", batch_size=2, progress=False)
    top = activations(model, prompts, layers=[1], top_k=7, progress=False)
    assert ds.attrs["method"] == "neuron_activations" and ds.attrs["n_forward_passes"] == 3  # 5 prompts, 2 per pass
    assert top.attrs["n_forward_passes"] == 2  # the sums, then the 7 kept neurons
    ids = [model.tokenizer(p.prompt)["input_ids"] for p in prompts]
    sums = 0
    for i, x in enumerate(ids):
        _, acts, _ = _run(hf, x)
        for li in range(hf.config.num_hidden_layers):
            got = ds["activation"].isel(prompt=i, layer=li).values[:, : len(x)].T
            np.testing.assert_allclose(got, acts[li].numpy(), rtol=1e-5, atol=1e-5)
        assert np.isnan(ds["activation"].isel(prompt=i).values[..., len(x):]).all()
        sums = sums + acts[1][-1].abs()
    want = np.sort(torch.topk(sums, 7).indices.numpy())
    np.testing.assert_array_equal(top["neuron_id"].sel(layer=1).values, want)
    last = np.stack([_run(hf, x)[1][1][-1, want].numpy() for x in ids])
    np.testing.assert_allclose(top["activation"].sel(layer=1).values[:, :, 0], last, rtol=1e-5, atol=1e-5)


def test_contributions_logit_lens_and_discovery_match_a_direct_computation(tiny):
    model, hf = tiny
    prompts = nr.tasks.cot_arithmetic(6, "full", n_steps=1, seed=3)
    tok = model.tokenizer
    ref = []
    for p in prompts:
        x = tok(p.prompt)["input_ids"]
        ans = tok(" " + p.answer, add_special_tokens=False)["input_ids"][0]
        _, acts, box = _run(hf, x)
        gamma, u, scale, center = _unembed_rows(hf, box)
        row = []
        for li in range(hf.config.num_hidden_layers):
            w = _directions(hf, li)
            w = w - w.mean(-1, keepdim=True) if center else w
            row.append(acts[li][-1] * ((w * gamma / scale) @ u[ans]))
        ref.append(torch.stack(row).numpy())
    ref = np.array(ref)  # (prompt, layer, neuron)
    ids = torch.tensor([tok(p.prompt)["input_ids"] for p in prompts[:1]])
    got = bn.neuron_contributions(model, ids, torch.tensor([tok(" " + prompts[0].answer, add_special_tokens=False)
                                                            ["input_ids"][0]]), [0, 1]).numpy()
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=1e-7)
    seen = []

    def labeller(tokens):  # what a user's LLM call would receive: the promoted tokens, no key
        seen.append(tokens)
        return "digits" if all(t.isdigit() for t in tokens) else "mixed"

    found = discover(model, prompts, top_k=5, min_frequency=0.3, n_tokens=4, labeller=labeller, progress=False)
    assert found.attrs["labeller"].endswith("test_contributions_logit_lens_and_discovery_match_a_direct_computation"
                                            ".<locals>.labeller")
    assert [list(r) for r in found["promoted"].values] == seen and len(seen) == found.sizes["unit"]
    assert set(found["label"].values) <= {"digits", "mixed"}
    flat = ref.reshape(len(prompts), -1)
    top = np.argsort(-flat, axis=1, kind="stable")[:, :5]
    freq = np.array([(top == u).any(1).mean() for u in range(flat.shape[1])])
    n = ref.shape[2]
    want = {(u // n, u % n) for u in np.nonzero(freq >= 0.3 - 1e-12)[0]}
    assert set(zip(found["layer"].values.tolist(), found["neuron"].values.tolist())) == want and want
    for u in range(found.sizes["unit"]):
        li, nn = int(found["layer"][u]), int(found["neuron"][u])
        assert found["frequency"].values[u] == pytest.approx(freq[li * n + nn])
        np.testing.assert_allclose(found["contribution"].values[:, u], ref[:, li, nn], rtol=1e-5, atol=1e-7)
        gamma, uc, _, center = _unembed_rows(hf, _run(hf, ids[0].tolist())[2])
        w = _directions(hf, li)[nn]
        w = w - w.mean() if center else w
        lens = ((w * gamma) @ uc.T).numpy()
        assert list(found["promoted"].values[u]) == tok.convert_ids_to_tokens(np.argsort(-lens)[:4].tolist())
        np.testing.assert_allclose(found["promoted_logit"].values[u], np.sort(lens)[::-1][:4], rtol=1e-5, atol=1e-7)
        # the paper's concept rule on the top 20 promoted tokens, decoded, stripped, lowercased
        words = [tok.decode([i]).strip().lower() for i in np.argsort(-lens)[:20].tolist()]
        counts = [sum(w in tokens for w in words) for tokens in CONCEPTS.values()]
        assert found["concept_matches"].values[u].tolist() == counts
        first = round(6 * hf.config.num_hidden_layers / 32)
        assert found["concepts"].values[u] == (",".join(c for c, k in zip(CONCEPTS, counts) if k > 1) if li >= first
                                              else "")


def test_concept_rule_counts_exact_members_of_the_papers_lists(embedded_tokenizer):
    """Rai & Yao's filter: decoded alone, stripped, lowercased, equal to a list entry; more than one."""
    tok = embedded_tokenizer
    ids = {w: tok(" " + w, add_special_tokens=False)["input_ids"][0] for w in ("sum", "plus", "+", "=", "*", "7")}
    rows = [[ids["sum"], ids["plus"], ids["+"], ids["7"]], [ids["="], ids["*"], ids["7"], ids["7"]]]
    m = concept_matches(tok, rows)
    add, mult, eq = (list(CONCEPTS).index(c) for c in ("add", "multiply", "equals_to"))
    assert m[0, add] == 3 and m[1, add] == 0 and m[1, mult] == 1 and m[1, eq] == 1 and m.sum() == 5
    assert concept_min_layer(32) == 6 and concept_min_layer(4) == 1


def test_ablated_scores_match_hooks(tiny):
    model, hf = tiny
    p = nr.tasks.cot_arithmetic(1, "equation_only", seed=5)[0]
    x = model.tokenizer(p.prompt)["input_ids"]
    ans = torch.tensor([[7, 9, 11]])
    plan = [(0, torch.tensor([1, 4]), torch.tensor([0.0, 0.0])), (1, torch.tensor([3]), torch.tensor([2.5]))]
    s = bn.ablated_scores(model, torch.tensor([x]), ans, plan)
    logits, _, _ = _run(hf, x, {0: (torch.tensor([1, 4]), torch.zeros(2)), 1: (torch.tensor([3]), torch.tensor([2.5]))})
    np.testing.assert_allclose(s.logits[0].numpy(), logits[ans[0]].numpy(), rtol=1e-5, atol=1e-5)
    lp = torch.log_softmax(logits, -1)
    assert int(s.rank[0]) == min(int((lp > lp[a]).sum()) for a in ans[0])  # the best candidate's
    assert not np.allclose(logits[ans[0]].numpy(), _run(hf, x)[0][ans[0]].numpy())  # the ablation matters


def test_cot_neurons_on_the_embedded_model(embedded_model, tmp_path):
    ds = nr.neurons(embedded_model, nr.tasks.cot_variants(100), progress=False)
    nr.testing.assert_valid_result(ds)
    assert ds.attrs["task"] == "cot_arithmetic" and json.loads(ds.attrs["task_params"])["n_prompts"] == 100
    assert ds.attrs["method"] == "cot_neurons" and list(ds["variant"].values) == list(nr.tasks.COT_VARIANTS)
    # the model card's figures re-measured (scripts/make_model_card.py runs this same call)
    card = embedded.card()["neurons"]
    acc = ds["accuracy"]
    assert {str(a): {str(v): round(float(acc.sel(ablation=a, variant=v)), 4) for v in acc.variant.values}
            for a in acc.ablation.values} == card["accuracy"]
    act = ds["activation"].mean("unit").to_pandas()
    assert act.to_dict() == pytest.approx(card["activation"], abs=1e-4)
    assert [f"L{int(l)}N{int(n)}" for l, n in zip(ds["layer"].values, ds["neuron"].values)] == card["units"]
    # a direct recount of the accuracy: the answer is the argmax of a plain forward
    tok = embedded_model.tokenizer
    with torch.no_grad():
        for k in range(5):
            text = str(ds["text"].sel(variant="equation_only").values[k])
            logits = embedded_model._module(torch.tensor([tok(text)["input_ids"]])).logits[0, -1]
            answer = tok(" " + str(ds["answer"].values[k]), add_special_tokens=False)["input_ids"][0]
            assert ds["correct"].sel(ablation="none", variant="equation_only").values[k] == int(logits.argmax() == answer)
    # the per-variant activation and the zero ablation, recomputed with hooks on the MLP output projections
    hf, proj = embedded_model._module, {}
    layer, neuron = int(ds["layer"][0]), int(ds["neuron"][0])
    units: dict[int, list[int]] = {}
    for lay, n in zip(ds["layer"].values, ds["neuron"].values):
        units.setdefault(int(lay), []).append(int(n))
    assert sum(map(len, units.values())) == ds.sizes["unit"]

    def pre_for(lay):
        def pre(m, args):
            if lay == layer:
                proj["last"] = float(args[0][0, -1, neuron])
            if proj.get("zero"):
                x = args[0].clone()
                x[..., sorted(units[lay])] = 0
                return (x,) + tuple(args[1:])
        return pre

    hooks = [hf.gpt_neox.layers[lay].mlp.dense_4h_to_h.register_forward_pre_hook(pre_for(lay)) for lay in units]
    try:
        acts = []
        with torch.no_grad():
            for text in ds["text"].sel(variant="equation_only").values:
                hf(torch.tensor([tok(str(text))["input_ids"]]))
                acts.append(proj["last"])
            proj["zero"] = True
            for k in range(5):
                text = str(ds["text"].sel(variant="equation_only").values[k])
                logits = hf(torch.tensor([tok(text)["input_ids"]])).logits[0, -1]
                answer = tok(" " + str(ds["answer"].values[k]), add_special_tokens=False)["input_ids"][0]
                assert ds["correct"].sel(ablation="zero", variant="equation_only").values[k] == int(
                    logits.argmax() == answer)
    finally:
        for h in hooks:
            h.remove()
    assert float(ds["activation"].sel(variant="equation_only").values[0]) == pytest.approx(np.mean(acts), rel=1e-4)
    nr.save_result(ds, tmp_path / "n.nc")
    assert list(nr.load_result(tmp_path / "n.nc")["promoted"].values[0]) == list(ds["promoted"].values[0])


def test_cli_neurons_plot_and_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = CliRunner().invoke
    res = run(app, ["neurons", "--n-prompts", "40", "--variant", "equation_only", "--variant", "no_cot", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "discovered neurons" in res.output and "random" in res.output
    path = tmp_path / "results" / "neurons_cot_arithmetic_embedded_main.nc"
    ds = nr.load_result(path)
    assert list(ds["variant"].values) == ["full", "equation_only", "no_cot"]  # discovery variant first
    res = run(app, ["plot", str(path)])
    assert res.exit_code == 0 and (tmp_path / "results" / "neurons_cot_arithmetic_embedded_main.png").stat().st_size > 5000
    # GSM8K files run too (meaningful on real models; the embedded vocabulary lacks most words)
    res = run(app, ["neurons", "--data", str(DATA / "gsm8k.jsonl"), "--n-shots", "0", "--no-progress", "--out",
                    str(tmp_path / "g.nc")])
    assert res.exit_code == 0, res.output
    assert nr.load_result(tmp_path / "g.nc").sizes["prompt"] == 3  # 624 is two tokens here: left out
    res = run(app, ["show", str(path)])
    assert res.exit_code == 0 and "discovered neurons" in res.output and "accuracy per variant" in res.output
    for args, msg in [(["--variant", "tree"], "unknown variant"), (["--min-frequency", "0"], "min_frequency"),
                      (["--n-shots", "6", "--n-steps", "3"], "context"), (["--unit", "L3"], "named like L3N488")]:
        res = run(app, ["neurons", "--n-prompts", "10", "--no-progress", "--out", str(tmp_path / "bad.nc"), *args])
        assert res.exit_code == 2 and msg in res.output, res.output
        assert not (tmp_path / "bad.nc").exists() and not (tmp_path / "bad.nc.parts").exists()


def test_neuron_bad_input(embedded_model):
    prompts = nr.tasks.cot_arithmetic(4)
    with pytest.raises(UsageError, match="top_k must be"):
        activations(embedded_model, prompts, top_k=0, progress=False)
    with pytest.raises(UsageError, match="positions must be"):
        activations(embedded_model, prompts, positions="first", progress=False)
    with pytest.raises(UsageError, match="layer 9 is out of range"):
        discover(embedded_model, prompts, layers=[9], progress=False)
    data = nr.tasks.cot_variants(4, ["equation_only"])
    with pytest.raises(UsageError, match="discover_on='full' is not among the data's variants"):
        nr.neurons(embedded_model, data, progress=False)
    with pytest.raises(UsageError, match=r"takes CotVariants or a list of CotPrompt, from nr.tasks.cot_variants"):
        nr.neurons(embedded_model, ["a prompt"], progress=False)
    with pytest.raises(UsageError, match="no prompts given"):
        nr.neurons(embedded_model, [], progress=False)
    with pytest.raises(UsageError, match="min_frequency"):
        nr.neurons(embedded_model, data, discover_on="equation_only", min_frequency=1.5, progress=False)
    with pytest.raises(UsageError, match="neuron 9999 is out of range"):
        nr.neurons(embedded_model, data, discover_on="equation_only", units=["L3N9999"], progress=False)
    with pytest.raises(UsageError, match="named like L3N488"):
        discover(embedded_model, prompts, units=["3.4"], progress=False)
    with pytest.raises(UsageError, match="no neuron is in the top 1 of at least 1.0 of the prompts"):
        nr.neurons(embedded_model, data, discover_on="equation_only", top_k=1, min_frequency=1.0,
                   revisions="step0,main", progress=False)
    with pytest.raises(UsageError, match="top_k picks other neurons per checkpoint"):
        activations(embedded_model, prompts, top_k=3, revisions="step0,main", progress=False)
    with pytest.raises(UsageError, match="labeller must be a function"):
        discover(embedded_model, prompts, labeller="gpt", progress=False)


def _label_digits(tokens):
    return "digits" if all(t.strip().isdigit() for t in tokens) else "other"


def test_labeller_is_known_by_name_so_runs_resume(embedded_model, tmp_path):
    """A labeller is a function object; the resume config and attrs hold its qualified name only,
    so a rerun (another object of the same function) reads every pass back."""
    data = nr.tasks.cot_variants(6, ["equation_only"], n_steps=1, seed=1).variant("equation_only")
    seen = []

    def make():  # a new function object each time, as in a new process
        def labeller(tokens):
            seen.append(tokens)
            return _label_digits(tokens)
        return labeller

    first = discover(embedded_model, data, top_k=5, min_frequency=0.5, labeller=make(), resume_dir=tmp_path,
                     progress=False)
    config = json.loads((tmp_path / "manifest.json").read_text())["config"]
    want = "tests.test_neurons.test_labeller_is_known_by_name_so_runs_resume.<locals>.make.<locals>.labeller"
    assert config["labeller"] == first.attrs["labeller"] == want
    assert first.attrs["task"] == "cot_arithmetic" and json.loads(first.attrs["task_params"])["variant"] == "equation_only"
    again = discover(embedded_model, data, top_k=5, min_frequency=0.5, labeller=make(), resume_dir=tmp_path,
                     progress=False)
    assert again.attrs["n_resumed_passes"] == again.attrs["n_forward_passes"] == first.attrs["n_forward_passes"] > 0
    assert list(again["label"].values) == list(first["label"].values) and len(seen) == 2 * first.sizes["unit"]
    for v in ("frequency", "contribution", "promoted_logit"):
        np.testing.assert_array_equal(again[v].values, first[v].values)


def test_fixed_units_are_scored_like_discovered_ones_and_sweeps_track_them(embedded_model, tmp_path):
    """units= measures given neurons with discovery's own numbers; a sweep without units tracks
    the neurons of its last revision, and equals a plain run there."""
    data = nr.tasks.cot_variants(8, ["equation_only", "no_cot"], n_steps=1, seed=2)
    kw = dict(discover_on="equation_only", top_k=10, min_frequency=0.25, batch_size=16, progress=False)
    found = nr.neurons(embedded_model, data, **kw)
    assert found.sizes["unit"] >= 2
    pick = [found.sizes["unit"] - 1, 0]  # reordered: the given order is kept
    names = [f"L{int(found['layer'][u])}N{int(found['neuron'][u])}" for u in pick]
    given = nr.neurons(embedded_model, data, units=names, **kw)
    nr.testing.assert_valid_result(given)
    assert given.attrs["fixed_units"] == ",".join(names) and given.sizes["unit"] == 2
    for k, u in enumerate(pick):
        for v in ("frequency", "mean_contribution", "contribution", "promoted"):
            np.testing.assert_array_equal(given[v].isel(unit=k).values, found[v].isel(unit=u).values)
        # the logit lens is one matmul over the units asked for: other units, other BLAS blocking (last bits)
        np.testing.assert_allclose(given["promoted_logit"].isel(unit=k).values,
                                   found["promoted_logit"].isel(unit=u).values, rtol=1e-12)
    np.testing.assert_array_equal(given["accuracy"].sel(ablation="none").values,
                                  found["accuracy"].sel(ablation="none").values)
    sweep = nr.neurons("embedded", data, revisions="step0,main", resume_dir=tmp_path / "parts", **kw)
    nr.testing.assert_valid_result(sweep)
    assert list(sweep["checkpoint"].values) == ["step0", "main"] and sweep["activation"].dims[0] == "checkpoint"
    assert sweep.attrs["units_chosen_on"] == "main"
    title = nr.plot_result(sweep.sel(checkpoint="main")).axes[0].get_title()
    assert "neurons discovered at main" in title, title  # tracked, not "given"
    assert sweep.attrs["fixed_units"] == ",".join(f"L{a}N{b}" for a, b in zip(found["layer"].values, found["neuron"].values))
    for v in found.data_vars:  # at main, exactly the plain run
        np.testing.assert_array_equal(sweep[v].sel(checkpoint="main").values, found[v].values, err_msg=v)
    again = nr.neurons("embedded", data, revisions="step0,main", resume_dir=tmp_path / "parts", **kw)
    assert again.attrs["n_resumed_revisions"] == 2  # the discovery on main is read back too: nothing recomputed
    np.testing.assert_array_equal(again["accuracy"].values, sweep["accuracy"].values)
    lines = [str(x) for x in neurons_module.summarize(sweep) if isinstance(x, str)]
    assert "discovered on equation_only at main, measured at every checkpoint" in lines[0]
