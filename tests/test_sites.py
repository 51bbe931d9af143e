"""Architecture knowledge as data (nnsight_reasoning/sites.py): for a tiny random model of each
supported family, the table's dims, weight layout and final norm agree with what a plain
PyTorch forward shows, backend calls that depend on them match forward-hook computations, and
features a family cannot do are refused with the table's reason."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, GemmaConfig, GPT2Config

import nnsight_reasoning as nr
from nnsight_reasoning import sites
from nnsight_reasoning.backend import Patch, answer_scores, graph
from nnsight_reasoning.backend import neurons as bn
from nnsight_reasoning.errors import UsageError

FAMILIES = ["gpt_neox", "gpt2", "gptj", "llama", "mistral", "qwen2", "gemma", "gemma2"]
PROMPTS = ["Alice has 3 apples and Bob has", "The cat sat on the mat and then"]


@pytest.fixture(scope="module")
def family(tiny_model_dir):
    made = {}

    def get(model_type):
        if model_type not in made:
            path = tiny_model_dir(model_type)
            hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
            hf.eval().requires_grad_(False)
            made[model_type] = nr.load_model(str(path)), hf
        return made[model_type]

    return get


def _ids(model):
    """Two prompts cut to one length (no padding)."""
    ids = [model.tokenizer(p)["input_ids"] for p in PROMPTS]
    t = min(map(len, ids))
    return torch.tensor([x[:t] for x in ids])


def _forward(hf, ids, hooks):
    """Run ``hf`` on ``ids`` with ``hooks`` [(module, 'pre'|'post', fn)] in place; last-position logits."""
    handles = [m.register_forward_pre_hook(fn) if kind == "pre" else m.register_forward_hook(fn)
               for m, kind, fn in hooks]
    try:
        with torch.no_grad():
            return hf(ids).logits[:, -1].double()
    finally:
        for h in handles:
            h.remove()


def _mlp_reads_the_layer_input(hf, arch, ids) -> bool:
    """Whether layer 1's MLP norm reads the same stream whatever its attention writes (attention
    and MLP in parallel; GPT-J: the one norm both read), not a stream the attention's output has
    joined: its input with the attention's output projection shifted by 1, against without."""
    layer = sites.resolve(hf, arch.layers)[1]

    def mlp_norm_input(bump):
        got = []
        hooks = [(sites.resolve(layer, arch.ln_mlp), "pre", lambda m, a: got.append(a[0].clone()))]
        _forward(hf, ids, hooks + ([(sites.resolve(layer, arch.o_proj), "post", lambda m, a, o: o + 1.0)]
                                   if bump else []))
        return got[0]

    return torch.equal(mlp_norm_input(False), mlp_norm_input(True))


def test_pythia_style_parallel_residual_is_what_the_forward_does(embedded_model):
    hf = AutoModelForCausalLM.from_pretrained(nr.models.model_info(embedded_model).path).eval()
    assert hf.config.use_parallel_residual and sites.parallel_residual(embedded_model)
    assert _mlp_reads_the_layer_input(hf, sites.architecture(embedded_model), _ids(embedded_model))


def _norm_behaviour(norm, d):
    """What the final norm does, read off its outputs alone: whether it centres, its gain γ,
    its bias β, with norm(x) = γ ⊙ N(x) / √(mean N(x)² + ε) + β."""
    torch.manual_seed(1)
    x = torch.randn(3, d, dtype=torch.float32) * 2
    with torch.no_grad():
        centres = bool(torch.allclose(norm(x + 5.0), norm(x), atol=1e-4))
        beta = norm(torch.full((1, d), 0.7))[0].double() if centres else torch.zeros(d, dtype=torch.float64)
        y = norm(x).double()
    return centres, beta, y, x.double()


@pytest.mark.parametrize("model_type", FAMILIES)
def test_table_matches_the_model_and_backend_calls_match_hooks(family, model_type):
    model, hf = family(model_type)
    arch, d = sites.architecture(model), sites.dims(model)
    layers = sites.resolve(hf, arch.layers)
    o_proj, mlp_out = sites.resolve(layers[1], arch.o_proj), sites.resolve(layers[1], arch.mlp_out)
    ids = _ids(model)
    n, t = ids.shape
    seen = {}
    clean = _forward(hf, ids, [
        (o_proj, "pre", lambda m, a: seen.update(heads=a[0].detach().clone())),
        (mlp_out, "pre", lambda m, a: seen.update(neurons=a[0].detach().clone())),
        (sites.resolve(hf, arch.embed), "post", lambda m, a, o: seen.update(embed=o.detach())),
        (sites.resolve(hf, arch.final_norm), "pre", lambda m, a: seen.update(final=a[0].detach().double())),
    ])

    # dims are the widths the forward pass shows
    assert d["n_layers"] == len(layers) == hf.config.num_hidden_layers
    assert seen["embed"].shape[-1] == d["d_model"]
    assert seen["heads"].shape[-1] == d["n_heads"] * d["head_dim"]
    assert seen["neurons"].shape[-1] == d["n_neurons"]
    if model_type.startswith("gemma"):  # config.head_dim, not d_model / n_heads
        assert d["head_dim"] == 16 != d["d_model"] // d["n_heads"]
    # the transposed flag is the weights' layout: (in, out) when transposed, else (out, in)
    for mod, width in ((o_proj, d["n_heads"] * d["head_dim"]), (mlp_out, d["n_neurons"])):
        layout = (width, d["d_model"]) if arch.transposed else (d["d_model"], width)
        assert tuple(mod.weight.shape) == layout, (model_type, tuple(mod.weight.shape))
    # the final norm's kind and epsilon are what the module does
    center, offset, eps = sites.final_norm_spec(model)
    final = sites.resolve(hf, arch.final_norm)
    centres, beta, y, x = _norm_behaviour(final, d["d_model"])
    assert centres == center
    xc = x - x.mean(-1, keepdim=True) if center else x
    want = xc / (xc.pow(2).mean(-1, keepdim=True) + eps).sqrt() * (final.weight.double() + offset) + beta
    np.testing.assert_allclose(y.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)

    # one head patch: row 0's head 2 at the last position of layer 1 takes row 1's value
    answers = torch.tensor([[5, 17, 40]] * n)
    scores = answer_scores(model, ids, answers, [Patch("head", 1, torch.tensor([0]), torch.tensor([1]),
                                                       torch.tensor([t - 1]), torch.tensor([2]))])

    def swap(m, a):
        x = a[0].clone()
        v = x.view(n, t, d["n_heads"], -1)
        v[0, -1, 2] = v[1, -1, 2]
        return (x,) + tuple(a[1:])

    patched = _forward(hf, ids, [(o_proj, "pre", swap)])
    for row, logits in ((0, clean[0]), (1, clean[1]), (2, patched[0])):
        np.testing.assert_allclose(scores.logits[row].numpy(), logits[answers[0]].numpy(), rtol=1e-5, atol=1e-5)
        lp = logits.log_softmax(-1)
        np.testing.assert_allclose(scores.log_probs[row].numpy(), lp[answers[0]].numpy(), rtol=1e-5, atol=1e-5)
        assert int(scores.rank[row]) == min(int((lp > lp[a]).sum()) for a in answers[0])  # the best candidate's
    assert not np.allclose(scores.logits[2].numpy(), scores.logits[0].numpy())  # the patch matters

    # neuron activations: the MLP output projection's input
    acts = bn.neuron_activations(model, ids, [1], last_only=False)
    np.testing.assert_allclose(acts[:, 0].numpy(), seen["neurons"].numpy(), rtol=1e-5, atol=1e-6)

    assert sites.parallel_residual(model) == _mlp_reads_the_layer_input(hf, arch, ids)
    assert sites.parallel_residual(model) == (model_type == "gptj")  # the tiny GPT-NeoX is built sequential

    if "logit_effects" in arch.unsupported:
        return
    # direct logit effects of heads: W_U (centred) · (γ ⊙ N(o_h) / s), γ as the norm behaves
    got = graph.head_logit_effects(model, ids, answers)  # (n, L, H, T, K)
    xf = seen["final"] - seen["final"].mean(-1, keepdim=True) if center else seen["final"]
    scale = (xf.pow(2).mean(-1) + eps).sqrt()  # (n, T)
    u = hf.get_output_embeddings().weight.double()
    gamma = final.weight.double() + offset
    w = o_proj.weight.double()
    z = seen["heads"].double().view(n, t, d["n_heads"], d["head_dim"])
    k = d["head_dim"]
    for h in range(d["n_heads"]):
        w_h = w[h * k:(h + 1) * k] if arch.transposed else w[:, h * k:(h + 1) * k].T  # (k, d_model)
        o = z[:, :, h] @ w_h
        o = o - o.mean(-1, keepdim=True) if center else o
        want = torch.einsum("ntd,nkd->ntk", o / scale[..., None], (u[answers] - u.mean(0)) * gamma)
        np.testing.assert_allclose(got[:, 1, h].numpy(), want.numpy(), rtol=1e-5, atol=1e-7)


def _config_only(cfg):
    return SimpleNamespace(config=cfg)


def test_dims_read_head_dim_and_neuron_width_from_the_config():
    gemma_7b = GemmaConfig(hidden_size=3072, num_attention_heads=16, num_key_value_heads=16, head_dim=256,
                           intermediate_size=24576, num_hidden_layers=28)
    assert sites.dims(_config_only(gemma_7b)) == {"n_layers": 28, "n_heads": 16, "d_model": 3072, "head_dim": 256,
                                                  "n_neurons": 24576, "n_dimensions": 3072}
    assert sites.dims(_config_only(GPT2Config(n_embd=64, n_head=4, n_layer=2)))["n_neurons"] == 256  # 4·d
    assert sites.dims(_config_only(GPT2Config(n_embd=64, n_head=4, n_layer=2, n_inner=100)))["n_neurons"] == 100


def test_unsupported_features_are_refused_with_the_reason(family):
    model, _ = family("gemma2")
    ids = _ids(model)
    answers = torch.tensor([[5, 17]] * len(ids))
    reasons = sites.ARCHITECTURES["gemma2"].unsupported
    assert set(reasons) == {"edges", "logit_effects"} <= set(sites.FEATURES)
    calls = [
        ("edges", lambda: graph.edge_attributions(model, ids, answers)),
        ("edges", lambda: graph.edge_patched_logits(model, ids, answers, torch.zeros(1, 1, 1))),
        ("logit_effects", lambda: graph.head_logit_effects(model, ids, answers)),
        ("logit_effects", lambda: bn.neuron_contributions(model, ids, answers[:, 0], [0])),
        ("logit_effects", lambda: bn.neuron_logit_lens(model, [0], [1], 3)),
    ]  # the residual logit lens is not refused: it reads the stream itself, then the soft cap (tests/test_lens.py)
    for feature, call in calls:
        with pytest.raises(UsageError) as e:
            call()
        msg = str(e.value)
        assert "\n" not in msg and reasons[feature] in msg and sites.FEATURES[feature] in msg and "gemma2" in msg
    # what it can do still works (patching through the soft-capped logits)
    assert answer_scores(model, ids, answers).logits.shape == (2, 2)
    with pytest.raises(UsageError, match="has no site map yet; supported: gemma, gemma2, gpt2, gpt_neox, gptj"):
        sites.architecture(SimpleNamespace(config=SimpleNamespace(model_type="mamba")))


def test_integer_options_are_checked_in_one_place(embedded_model, tmp_path):
    """errors.checked_int, which every integer option goes through (sizes, counts, steps): numpy's
    integers are taken as ints (a Jupyter loop over np.arange used to be refused by batch_size,
    n_prompts, workers, ig_steps, finetune's steps); a bool (True would be one prompt, one step), a
    float, a string, a tensor and an array are one-line errors."""
    from nnsight_reasoning.errors import checked_int
    from nnsight_reasoning.tasks import TaskError

    for good in (3, np.int64(3), np.uint8(3)):
        got = checked_int("n", good, 1)
        assert got == 3 and type(got) is int
    # a tensor or an array would pass range() but not scikit-learn, and be recorded as "tensor(3)"
    for bad in (True, np.bool_(True), 3.0, "3", np.array([3]), np.array(3), torch.tensor(3), None, 0):
        with pytest.raises(UsageError, match=r"^n must be an integer >= 1 \(got "):
            checked_int("n", bad, 1)
    with pytest.raises(UsageError, match=r"^n must be an integer from 1 to 4 \(got 5\)$"):
        checked_int("n", 5, 1, 4)
    with pytest.raises(TaskError, match=r"^n must be an integer in 1\.\.4 \(the range\) \(got 5\)$"):
        checked_int("n", 5, 1, 4, bound="in 1..4 (the range)", error=TaskError)
    # through the entry points: numpy integers work as Python's (and are recorded as numbers), bools are refused
    assert nr.tasks.arithmetic(n_prompts=np.int64(2), seed=0) == nr.tasks.arithmetic(n_prompts=2, seed=0)
    rec = nr.evaluate(embedded_model, nr.tasks.examples("arithmetic", np.int64(3), seed=0), progress=False)
    assert '"n_prompts": 3' in rec.attrs["task_params"], rec.attrs["task_params"]
    with pytest.raises(TaskError, match="n_prompts must be an integer"):
        nr.tasks.arithmetic(n_prompts=True, seed=0)
    examples = nr.tasks.examples("arithmetic", 4, seed=0)
    a = nr.evaluate(embedded_model, examples, batch_size=np.int64(2), progress=False)
    b = nr.evaluate(embedded_model, examples, batch_size=2, progress=False)
    assert a.attrs["batch_size"] == 2 and a.attrs["n_forward_passes"] == b.attrs["n_forward_passes"]
    np.testing.assert_array_equal(a["p_answer"].values, b["p_answer"].values)
    pairs = nr.tasks.arithmetic(n_prompts=2, seed=0)
    sequences = nr.tasks.text_sequences(n_sequences=2, seq_len=8, tokenizer=embedded_model.tokenizer)
    for call, message in (
            (lambda: nr.evaluate(embedded_model, examples, batch_size=True), "batch_size must be an integer >= 1"),
            (lambda: nr.patch(embedded_model, pairs, method="attribution", ig_steps=True), "ig_steps must be"),
            (lambda: nr.logit_lens(embedded_model, examples, top_k=True), "top_k must be an integer in 1.."),
            (lambda: nr.copy_suppression(embedded_model, sequences, n_mean=True, n_eval=1),
             "n_mean must be an integer from 1 to the 2 sequences"),
            (lambda: nr.binding(embedded_model, nr.tasks.binding_contexts(4, seed=0), entity_tokens=True),
             "entity_tokens must be an integer >= 1"),
            (lambda: nr.finetune(embedded_model, out=tmp_path / "ft", steps=True), "steps must be an integer >= 1"),
            (lambda: nr.evaluate(embedded_model, examples, workers=True), "workers must be an integer >= 1")):
        with pytest.raises(UsageError, match=message):
            call()
    assert not any(tmp_path.iterdir())  # nothing written


def test_layer_and_head_choices_are_checked_in_one_place(embedded_model):
    """check_layers / check_heads, which every experiment that takes layers or heads calls: a
    bool (an int to Python: True would be layer 1), a float, an empty choice and an index out of
    range are one-line errors naming the range; one integer, numpy integers and any iterable are taken."""
    assert sites.check_layers(None, 4) == [0, 1, 2, 3] and sites.check_layers(None, 4, embeddings=True)[0] == -1
    assert sites.check_layers(np.array([3, 1, 3]), 4) == [1, 3] and sites.check_heads(range(2), 4) == [0, 1]
    assert sites.check_layers((-1, 2), 4, embeddings=True) == [-1, 2]
    assert sites.check_layers(2, 4) == sites.check_layers(np.int64(2), 4) == sites.check_heads(torch.tensor(2), 4) == [2]
    for bad, message in (([True], "layer True is not an integer"), ([1.0], "layer 1.0 is not an integer"),
                         ("1", "layer '1' is not an integer"), ([], "no layers given"),
                         ([-1], "layer -1 is out of range"), ([4], "layer 4 is out of range")):
        with pytest.raises(UsageError, match=message + r".*this model has layers 0\.\.3\b"):
            sites.check_layers(bad, 4)
    for bad in ([False], False, np.bool_(True), torch.tensor([True])):
        with pytest.raises(UsageError, match=r"head .* is not an integer: this model has heads 0\.\.3$"):
            sites.check_heads(bad, 4)
    # through the experiments: a bool used to reach the model as a module name, [] a zero range step
    pairs = nr.tasks.arithmetic(n_prompts=2, seed=0)
    with pytest.raises(UsageError, match="layer True is not an integer"):
        nr.patch(embedded_model, pairs, sites=["mlp"], layers=[True], progress=False)
    with pytest.raises(UsageError, match="no layers given"):
        nr.patch(embedded_model, pairs, sites=["mlp"], layers=[], progress=False)
    prompts = nr.tasks.kth_smallest(2, length=5, k=2, seed=4)
    with pytest.raises(UsageError, match="no heads given"):
        nr.attention(embedded_model, prompts, heads=[], progress=False)
    ds = nr.patch(embedded_model, pairs, sites=["mlp"], layers=np.array([2]), progress=False)
    assert ds["layer"].values.tolist() == [2]
    # the experiments that take a layer their own way refuse a bool too
    from nnsight_reasoning.experiments.neurons import parse_units

    assert parse_units([(np.int64(1), 2), "L3N4"]) == [(1, 2), (3, 4)]
    for bad in ((True, 2), (1.7, 2), 3):
        with pytest.raises(UsageError, match="a unit is a .layer, neuron. pair"):
            parse_units([bad])
    sequences = nr.tasks.text_sequences(n_sequences=2, seq_len=8, tokenizer=embedded_model.tokenizer)
    with pytest.raises(UsageError, match="start_layer must be an integer from 0 to 3 .got True."):
        nr.copy_suppression(embedded_model, sequences, start_layer=True, n_mean=1, n_eval=1, progress=False)
    with pytest.raises(UsageError, match="drop_layers must be distinct layers in 0..3"):
        nr.probe(embedded_model, nr.tasks.kth_smallest(6, seed=2), drop_layers=[True], progress=False)
