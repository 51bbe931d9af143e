"""Self-repair (Tigges et al.'s backup_research/FINAL_figure_files/GOOD_self_repair_graph_generator.py):
each head's direct effect and the change of the next token's logit when it is ablated, against plain
PyTorch hooks on the HF model (three architectures), independent of the batch size, the remote
serialisation path, and the CLI."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import nnsight_reasoning as nr
from nnsight_reasoning import embedded
from nnsight_reasoning.errors import UsageError

from .clirun import in_process
from .reference_edges import NORMS, _get


def _hf(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()


def _run(hf, ids, replace=None):
    """Logits (float64), every layer's output-projection input, and the final norm's input; with
    ``replace`` = (layer, head, values), that head's slice of the projection input is ``values``'."""
    layers, *_, o_proj, _, _, final, _ = NORMS[hf.config.model_type]
    n_heads = hf.config.num_attention_heads
    z, fin, hooks = {}, {}, []
    for li, block in enumerate(_get(hf, layers)):
        def pre(module, args, li=li):
            x = args[0]
            z[li] = x.detach().clone()
            if replace is not None and replace[0] == li:
                hd = x.shape[-1] // n_heads
                x = x.clone()
                x[..., replace[1] * hd:(replace[1] + 1) * hd] = replace[2][..., replace[1] * hd:(replace[1] + 1) * hd]
                return (x,) + tuple(args[1:])
        hooks.append(_get(block, o_proj).register_forward_pre_hook(pre))
    hooks.append(_get(hf, final).register_forward_pre_hook(lambda m, a: fin.update(x=a[0].detach().clone())))
    try:
        with torch.no_grad():
            return hf(ids).logits.double(), z, fin["x"].double()
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def _reference(hf, ids, source, ablation, threshold):
    """(direct, change, count, replaced, norm) per (sequence, layer, head), summed over tokens with
    |direct| > threshold:
    the direct effect as TransformerLens reads it with center_unembed (the head's output, centred for
    LayerNorm, over the final norm's clean scale, on the next token's unembedding row minus the mean
    row, times the norm's gain) and the change of the next token's centred logit, the head's output
    replaced by its output on ``source``, by zeros or by its mean over every row and position, and the
    direct effect of that replacement read the same way, and the change minus the change of the final norm's
    input read through the clean scale (what the norm's rescaling alone changes)."""
    layers, *_, o_proj, _, _, final, _ = NORMS[hf.config.model_type]
    n_layers, n_heads = hf.config.num_hidden_layers, hf.config.num_attention_heads
    layernorm = hf.config.model_type != "llama"
    norm = _get(hf, final)
    unembed = hf.get_output_embeddings().weight.double()
    target = ids[:, 1:]

    def centred_logit(logits):
        lg = logits[:, :-1]
        return lg.gather(2, target[:, :, None])[:, :, 0] - lg.mean(-1)

    logits, z, f = _run(hf, ids)
    _, z_src, _ = _run(hf, source)
    f = f[:, :-1]
    if layernorm:
        f = f - f.mean(-1, keepdim=True)
    eps = getattr(norm, "eps", None) or getattr(norm, "variance_epsilon")
    scale = (f.pow(2).mean(-1) + eps).sqrt()
    rows = (unembed[target] - unembed.mean(0)) * norm.weight.double()
    clean = centred_logit(logits)
    out = np.zeros((5, ids.shape[0], n_layers, n_heads))
    for li, block in enumerate(_get(hf, layers)):
        proj = _get(block, o_proj)
        w = proj.weight.double()
        w = w.T if hf.config.model_type == "gpt2" else w  # Conv1D stores (in, out)
        hd = w.shape[1] // n_heads
        def direct(zz, h):  # the head's share of the projection of zz, through the clean final norm
            o = zz[:, :-1, h * hd:(h + 1) * hd].double() @ w[:, h * hd:(h + 1) * hd].T
            if layernorm:
                o = o - o.mean(-1, keepdim=True)
            return ((o / scale[..., None]) * rows).sum(-1)

        for h in range(n_heads):
            de = direct(z[li], h)
            values = {"resample": z_src[li], "zero": torch.zeros_like(z[li]),
                      "mean": z[li].double().mean((0, 1)).expand(z[li].shape)}[ablation]
            logits_ablated, _, f_ablated = _run(hf, ids, (li, h, values))
            change = centred_logit(logits_ablated) - clean
            f_ablated = f_ablated[:, :-1]
            if layernorm:
                f_ablated = f_ablated - f_ablated.mean(-1, keepdim=True)
            at_clean_scale = (((f_ablated - f) / scale[..., None]) * rows).sum(-1)
            keep = de.abs() > threshold
            out[0, :, li, h] = torch.where(keep, de, 0).sum(-1).numpy()
            out[1, :, li, h] = torch.where(keep, change, 0).sum(-1).numpy()
            out[2, :, li, h] = keep.sum(-1).numpy()
            # the model runs in float32: the replacement it writes is the float32 value
            out[3, :, li, h] = torch.where(keep, direct(values.float(), h), 0).sum(-1).numpy()
            out[4, :, li, h] = torch.where(keep, change - at_clean_scale, 0).sum(-1).numpy()
    return out


@pytest.mark.parametrize("model_type", ["embedded", "gpt2", "llama"])
def test_self_repair_matches_hooks(embedded_model, tiny_model_dir, model_type):
    path = embedded.revision_path("main") if model_type == "embedded" else tiny_model_dir(model_type)
    model = embedded_model if model_type == "embedded" else nr.load_model(str(path))
    hf = _hf(path)
    seqs = nr.tasks.text_sequences(5, 14, seed=2, tokenizer=model.tokenizer)
    ids = torch.tensor([list(s) for s in seqs])
    for ablation, threshold in (("resample", 0.0), ("zero", 0.05), ("mean", 0.0)):
        ds = nr.self_repair(model, seqs, ablation=ablation, threshold=threshold, batch_size=16, progress=False)
        nr.testing.assert_valid_result(ds)
        de, change, count, replaced, norm = _reference(hf, ids, torch.roll(ids, 1, 0), ablation, threshold)
        total = count.sum(0)
        # float32 forward passes: a few ulps of the largest centred logit per token, in means over tokens
        tol = 1e-5 * max(1.0, float(np.abs(change / np.maximum(count, 1)).max()))
        np.testing.assert_array_equal(ds["n_tokens"].values, total)
        np.testing.assert_allclose(ds["replaced_direct_effect"].values, replaced.sum(0) / total, atol=tol)
        if ablation == "zero":
            assert (ds["replaced_direct_effect"].values == 0).all()
        else:  # what takes the head's place writes something of its own on the next token
            assert np.abs(ds["replaced_direct_effect"].values).max() > 1e-3
        np.testing.assert_allclose(ds["norm_rescaling"].values, norm.sum(0) / total, atol=tol)
        assert np.abs(ds["norm_rescaling"].values).max() > 1e-3  # the ablated runs' final residuals rescale
        if model_type == "embedded":  # parallel attention and MLP: nothing reads the last layer's heads but the norm,
            # so all they "make up" is what replaces them and the norm's rescaling (the decomposition is exact)
            last = ds.isel(layer=-1)
            assert (last.n_tokens > 0).all()  # every last-layer head has tokens over the threshold: no NaN
            np.testing.assert_allclose(last.self_repair - last.replaced_direct_effect - last.norm_rescaling, 0,
                                       atol=2 * tol)
        np.testing.assert_allclose(ds["direct_effect"].values, de.sum(0) / total, atol=tol)
        np.testing.assert_allclose(ds["logit_change"].values, change.sum(0) / total, atol=tol)
        np.testing.assert_allclose(ds["self_repair"].values, (de.sum(0) + change.sum(0)) / total, atol=2 * tol)
        with np.errstate(invalid="ignore"):
            np.testing.assert_allclose(ds["sequence_logit_change"].values, change / count, atol=tol)
        assert np.abs(ds["logit_change"].values).max() > 1e-3  # ablations change the logits
        if ablation == "zero":
            assert (total < ids.shape[0] * (ids.shape[1] - 1)).any()  # the threshold drops tokens


def test_self_repair_does_not_depend_on_batching_and_runs_remotely(embedded_model):
    seqs = nr.tasks.text_sequences(7, 12, seed=3, tokenizer=embedded_model.tokenizer)
    for ablation in ("resample", "mean"):
        big = nr.self_repair(embedded_model, seqs, heads="a0.1,a2.3", ablation=ablation, batch_size=64, progress=False)
        small = nr.self_repair(embedded_model, seqs, heads="a0.1,a2.3", ablation=ablation, batch_size=3,
                               progress=False)
        assert small.attrs["n_forward_passes"] > big.attrs["n_forward_passes"]
        far = nr.self_repair(embedded_model, seqs, heads="a0.1,a2.3", ablation=ablation, remote="local",
                             progress=False)
        # the means are summed in float64 batch by batch, then cast to float32: the last bit may differ
        tol = 1e-9 if ablation == "resample" else 1e-5
        for other in (small, far):
            for v in ("direct_effect", "logit_change", "norm_rescaling", "sequence_direct_effect"):
                np.testing.assert_allclose(other[v].values, big[v].values, atol=tol, equal_nan=True)
    measured = np.isfinite(big["direct_effect"].values)
    assert measured.sum() == 2 and measured[0, 1] and measured[2, 3] and big.attrs["heads"] == "a0.1,a2.3"
    for bad, match in ((dict(ablation="median"), "ablation must be"), (dict(threshold=-1), "threshold"),
                       (dict(heads="x"), "aL.H")):
        with pytest.raises(UsageError, match=match):
            nr.self_repair(embedded_model, seqs, progress=False, **bad)
    with pytest.raises(UsageError, match="takes TextSequences"):
        nr.self_repair(embedded_model, nr.tasks.repeated_tokens(4, 5), progress=False)


def test_self_repair_from_the_cli(tmp_path):
    out = tmp_path / "sr.nc"
    r = in_process(["self-repair", "--n-sequences", "6", "--seq-len", "12", "--heads", "a0.3,a1.0", "--out", str(out)])
    assert r.returncode == 0, r.stderr
    ds = nr.load_result(out)
    assert ds.attrs["method"] == "self_repair" and ds.attrs["ablation"] == "resample"
    assert "self-repair = logit change + direct effect" in r.stdout and "replaced = the direct effect" in r.stdout
    assert "final norm" in r.stdout and "the final norm's rescaling alone" in r.stdout
    r = in_process(["plot", str(out)])
    assert r.returncode == 0 and (tmp_path / "sr.png").exists(), r.stderr
    both = tmp_path / "models.nc"  # two models in one result: one marker set each
    r = in_process(["self-repair", "--model", str(embedded.revision_path("main")), "--model",
                    str(embedded.revision_path("step1000")), "--n-sequences", "4", "--seq-len", "12", "--heads", "a0.1",
                    "--ablation", "mean", "--out", str(both)])
    assert r.returncode == 0, r.stderr
    assert nr.load_result(both).sizes["model"] == 2 and nr.load_result(both).attrs["ablation"] == "mean"
    r = in_process(["plot", str(both)])
    assert r.returncode == 0 and (tmp_path / "models.png").exists(), r.stderr
    for extra, match in ((["--ablation", "median"], "ablation must be"), (["--data", "nope.jsonl"], "no such file"),
                         (["--seq-len", "2"], "--seq-len must be >= 4")):
        bad = tmp_path / "bad.nc"
        r = in_process(["self-repair", "--out", str(bad), *extra])
        assert r.returncode == 2 and match in r.stderr and not bad.exists(), r.stderr
