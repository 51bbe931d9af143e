"""nnsight's private API, used only through nnsight_reasoning/nnsight_shim.py: it is all there in
the pinned version and each hook does its job; and the trace-side helpers
(backend/trace_ops.py, registered with ``nnsight.register``) run on a real NDIF server, where
this package is not installed, with the same numbers as locally."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

import nnsight_reasoning as nr
from nnsight_reasoning import nnsight_shim

PACKAGE = Path(nr.__file__).resolve().parent
KEY = "sk-test-shim-never-print-me"


def test_private_api_of_the_pinned_nnsight_is_all_there():
    missing = nnsight_shim.check()
    assert missing == [], f"nnsight's private API changed; re-read nnsight_shim.py. Missing: {missing}"


def test_check_lists_what_another_nnsight_lacks(monkeypatch):
    import nnsight
    import nnsight.modeling.huggingface as hf
    from nnsight.intervention.backends.remote import RemoteBackend

    monkeypatch.setattr(nnsight, "__version__", "9.9.9")
    monkeypatch.delattr(RemoteBackend, "_post")
    monkeypatch.delattr(hf, "_ID_CACHE")
    assert nnsight_shim.check() == ["nnsight 9.9.9 (written for 0.8.1)", "RemoteBackend._post",
                                    "nnsight.modeling.huggingface._ID_CACHE"]


def test_no_other_package_file_touches_nnsight_privates():
    """Every use of nnsight's private API goes through nnsight_shim."""
    private = re.compile(r"\._module\b|_ID_CACHE|\b_post\b|RemoteBackend")
    offenders = [f"{p.relative_to(PACKAGE)}:{i}" for p in sorted(PACKAGE.rglob("*.py")) if p.name != "nnsight_shim.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if private.search(line)]
    assert offenders == []


def test_torch_module_is_the_wrapped_module(embedded_model):
    from nnsight_reasoning.sites import architecture, resolve

    root = nnsight_shim.torch_module(embedded_model)
    assert isinstance(root, torch.nn.Module) and root.config is embedded_model.config
    layer = resolve(embedded_model, architecture(embedded_model).layers)[0]
    assert nnsight_shim.torch_module(layer) is resolve(root, architecture(embedded_model).layers)[0]
    plain = torch.nn.Linear(2, 2)
    assert nnsight_shim.torch_module(plain) is plain


def test_name_local_model_makes_the_path_the_model_key(tiny_model_dir, monkeypatch):
    import nnsight.modeling.huggingface as hf

    monkeypatch.setattr(hf, "_ID_CACHE", {})  # nothing named yet in this test
    path = str(Path(tiny_model_dir("gpt2")).resolve())
    model = nr.load_model(path)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    with pytest.raises(Exception):  # unnamed, nnsight asks the (offline) Hub for the id
        model.to_model_key()
    nnsight_shim.name_local_model(path)
    key = model.to_model_key()
    assert f'"repo_id": "{path}"' in key and "nnsight.modeling" in key


def test_counting_backend_counts_and_hides_its_display(monkeypatch):
    from nnsight.intervention.backends.remote import RemoteBackend

    counts: dict[str, int] = {}

    def count(what, n):
        counts[what] = counts.get(what, 0) + n

    backend = nnsight_shim.counting_backend("some-key", host="http://127.0.0.1:9", api_key="k", blocking=False,
                                            count=count)
    assert isinstance(backend, RemoteBackend) and not backend.display.enabled and not backend.blocking
    # the overrides call nnsight's own methods: stand-ins record that they were reached
    monkeypatch.setattr(RemoteBackend, "_post", lambda self, request, blob: ("posted", blob))
    monkeypatch.setattr(RemoteBackend, "poll", lambda self, tracer=None: None)
    monkeypatch.setattr(RemoteBackend, "finalize", lambda self, content: {"x": content})
    assert backend._post("request", b"12345") == ("posted", b"12345")
    assert backend.poll() is None and backend.poll() is None
    assert backend.finalize(b"abc") == {"x": b"abc"}
    assert counts == {"jobs": 1, "bytes_sent": 5, "polls": 2, "bytes_received": 3}


# --------------------------------------------------------------------------- trace_ops remotely
def _backend_calls(model):
    """Every backend function whose trace uses the helpers of trace_ops, as name -> call(remote)."""
    from nnsight_reasoning import backend
    from nnsight_reasoning.backend import graph, neurons, resid

    tok = model.tokenizer
    texts = ["12 + 7 = 19. 3 + 4 =", "12 + 7 = 19. 5 + 2 ="]
    ids = torch.tensor([tok(t)["input_ids"] for t in texts])
    n, t = ids.shape
    ans = torch.tensor([tok(" 7", add_special_tokens=False)["input_ids"] * 2] * n)
    patches = [backend.Patch("head", 1, torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([t - 1, t - 2]),
                             torch.tensor([0, 3])),
               backend.Patch("mlp", 0, torch.tensor([1]), torch.tensor([0]), torch.tensor([t - 1])),
               backend.Patch("resid", 2, torch.tensor([0]), torch.tensor([1]), torch.tensor([t - 1]))]
    sites = [("head", 1), ("attn", 0), ("mlp", 2), ("resid", 1)]
    layers = [0, 2]
    cuts = (torch.rand((2,) + graph.valid_edges(*graph.graph_shape(model)).shape,
                       generator=torch.Generator().manual_seed(0)) < 0.3).float()
    n_layers, n_heads, _ = graph.graph_shape(model)
    cuts_qkv = (torch.rand((2, cuts.shape[1], n_layers, n_heads, 3), generator=torch.Generator().manual_seed(2))
                < 0.2).float()
    replace = torch.randn((1, cuts.shape[1], model.config.hidden_size), generator=torch.Generator().manual_seed(1),
                          dtype=torch.float64)
    return {
        "answer_scores": lambda r: backend.answer_scores(model, ids, ans, patches, remote=r),
        # the rank of the best of some candidates (an answer set's members among distractors)
        "answer_scores_best_of": lambda r: backend.answer_scores(
            model, ids, torch.arange(12).repeat(n, 1) + ans[:, :1], best_of=torch.arange(12).repeat(n, 1) % 3 == 1,
            remote=r),
        "attributions": lambda r: backend.attributions(model, ids, ans, sites, "log_prob_diff", ig_steps=2, remote=r),
        "edge_attributions": lambda r: graph.edge_attributions(model, ids, ans, ig_steps=2, remote=r),
        "edge_patched_logits": lambda r: graph.edge_patched_logits(model, ids, ans, cuts, remote=r),  # engine v2
        "edge_patched_logits_v1": lambda r: _on_v1(graph.edge_patched_logits, model, ids, ans, cuts, remote=r),
        # answer-set metrics over probabilities and mean ablation (replace), the circuit's options
        "edge_attributions_ablated": lambda r: graph.edge_attributions(
            model, ids, ans, torch.tensor([[0.5, -1.0]] * n, dtype=torch.float64), probs=True, replace=replace,
            remote=r),
        "edge_patched_logits_ablated": lambda r: graph.edge_patched_logits(model, ids, ans, cuts, lse=True,
                                                                           replace=replace, remote=r),
        # cuts at heads' q, k and v inputs (three copies per head), at the last position only
        "edge_patched_logits_qkv": lambda r: graph.edge_patched_logits(model, ids, ans, cuts, removed_qkv=cuts_qkv,
                                                                       last_only=True, remote=r),
        "edge_patched_logits_attention": lambda r: graph.edge_patched_logits(
            model, ids, ans, cuts, removed_qkv=cuts_qkv, attention_layers=[1, 3], remote=r),
        "node_output_sums": lambda r: graph.node_output_sums(model, ids, remote=r),
        "head_input_sums": lambda r: graph.head_input_sums(model, ids, remote=r),
        "head_logit_effects": lambda r: graph.head_logit_effects(model, ids, ans, remote=r),
        "attention_question_rows": lambda r: backend.attention_probs(model, ids, [0, 3], question_from=torch.tensor(
            [t - 3, t - 2]), reduce="max", remote=r),
        "head_masked_scores": lambda r: backend.head_masked_scores(
            model, ids, ans, torch.tensor([[[1.0, 0, 1, 1]] * 4, [[0.0, 1, 1, 0]] * 4]), remote=r),
        "neuron_contributions": lambda r: neurons.neuron_contributions(model, ids, ans[:, 0], layers, remote=r),
        "neuron_logit_lens": lambda r: neurons.neuron_logit_lens(model, [0, 2], [5, 9], 4, remote=r),
        "ablated_scores": lambda r: neurons.ablated_scores(
            model, ids, ans, [(2, torch.tensor([1, 3]), torch.zeros(2)), (0, torch.tensor([4]), torch.ones(1))],
            remote=r),
        "edited_scores": lambda r: resid.edited_scores(model, ids, ans, torch.tensor([0]), torch.tensor([1]),
                                                       torch.tensor([t - 1]), remote=r),
    }


def _on_v1(fn, *args, **kwargs):
    from nnsight_reasoning import backend

    with backend.engine("v1"):
        return fn(*args, **kwargs)


def _flat(x):
    """The tensors of a backend result, in order."""
    if x is None:
        return []
    if isinstance(x, torch.Tensor):
        return [x]
    if hasattr(x, "__dataclass_fields__"):
        return [t for f in x.__dataclass_fields__ for t in _flat(getattr(x, f))]
    return [t for v in x for t in _flat(v)]


def _assert_same(got, want, name):
    got, want = _flat(got), _flat(want)
    assert len(got) == len(want), name
    for g, w in zip(got, want):
        assert g.shape == w.shape, name
        torch.testing.assert_close(g.double(), w.double(), rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_trace_helpers_run_through_nnsights_serialisation_locally(embedded_model):
    """remote="local": each trace is serialised (its helpers by value) and run here."""
    for name, call in _backend_calls(embedded_model).items():
        _assert_same(call("local"), call(False), name)


@pytest.fixture
def ndif_key(monkeypatch):
    for k in list(os.environ):
        if k.startswith(("NDIF_", "REASON_INTERP_")):
            monkeypatch.delenv(k)
    monkeypatch.setenv("NDIF_API_KEY", KEY)


@pytest.mark.remote
@pytest.mark.slow
def test_trace_helpers_run_on_ndif_like_locally(ndif, ndif_key, embedded_model):
    """The server has no nnsight_reasoning: the registered helpers travel with each job."""
    from nnsight_reasoning import remote

    served = ndif.requests_received()
    calls = _backend_calls(embedded_model)
    with remote.counting(remote.Traffic()) as traffic:
        for name, call in calls.items():
            _assert_same(call(ndif.host), call(False), name)
    assert traffic.jobs == len(calls) == ndif.requests_received() - served and traffic.retries == 0
    assert traffic.polls >= traffic.jobs and traffic.bytes_sent > 0 and traffic.bytes_received > 0


@pytest.mark.remote
@pytest.mark.slow
def test_without_registration_the_server_cannot_load_the_helpers(ndif, ndif_key, embedded_model):
    """Why trace_ops is registered: pickled by reference, a helper is an import of this
    package on the server, which does not have it. (The loopback server's workers start in
    this checkout, so the import finds the package's source and fails at its first
    dependency, xarray; on NDIF it fails at nnsight_reasoning itself.)"""
    import cloudpickle

    from nnsight_reasoning.backend import trace_ops

    answer_scores = _backend_calls(embedded_model)["answer_scores"]
    cloudpickle.unregister_pickle_by_value(trace_ops)
    try:
        with pytest.raises(nr.RunError, match="No module named '(nnsight_reasoning|xarray)'"):
            answer_scores(ndif.host)
        _assert_same(answer_scores("local"), answer_scores(False), "by reference, here")  # fine where installed
    finally:
        cloudpickle.register_pickle_by_value(trace_ops)
    _assert_same(answer_scores(ndif.host), answer_scores(False), "registered again")
