"""The schema of every experiment's result, by ``attrs["method"]``: which variables, with
which dims, and the provenance every result carries. ``nr.testing.assert_valid_result(ds)``
checks a Dataset against it."""
from __future__ import annotations

import json

import numpy as np
import xarray as xr

from ..sites import SITES, unit_dim, var_name
from .io import REQUIRED_ATTRS, site_variables

_PROMPT_COORDS = ("base", "source", "base_answer", "source_answer")
_EDGES = {"score": ("upstream", "downstream"), "clean_logit_diff": ("prompt",), "corrupt_logit_diff": ("prompt",),
          "circuit_logit_diff": ("size", "prompt"), "faithfulness": ("size",), "fraction": ("size",),
          "n_edges": ("size",), "n_nodes": ("size",), "in_circuit": ("size", "upstream", "downstream")}
_NEURONS = {"frequency": ("unit",), "mean_contribution": ("unit",), "contribution": ("prompt", "unit"),
            "promoted": ("unit", "rank"), "promoted_logit": ("unit", "rank")}

# method -> {variable: dims without a sweep's leading checkpoint}; variables marked optional may be absent
SCHEMAS: dict[str, dict[str, tuple[str, ...]]] = {
    "evaluate": {"correct": ("prompt",), "p_answer": ("prompt",), "answer_rank": ("prompt",), "accuracy": (),
                 "mean_p_answer": (), "mean_rank": ()},
    "logit_lens": {"p_answer": ("prompt", "layer"), "answer_rank": ("prompt", "layer"),
                   "top_token": ("prompt", "layer", "k"), "top_text": ("prompt", "layer", "k"),
                   "top_p": ("prompt", "layer", "k"), "accuracy": ("layer",), "mean_p_answer": ("layer",),
                   "mean_rank": ("layer",)},
    "attention": {"prompt_entropy": ("prompt", "layer", "head"), "mass": ("prompt", "layer", "head", "group"),
                  "n_tokens": ("prompt", "group")},
    "mechanistic_probe": {"f1": ("probe", "layer"), "accuracy": ("probe", "layer"), "f1_all": ("probe",),
                          "accuracy_all": ("probe",), "majority": ("probe",), "n_samples": ("probe",)},
    "head_pruning": {"accuracy": ("ordering", "fraction"), "p_answer": ("ordering", "fraction"),
                     "correct": ("ordering", "fraction", "prompt"), "pruned": ("ordering", "fraction", "layer", "head"),
                     "n_pruned": ("fraction",), "accuracy_unpruned": (), "p_answer_unpruned": (),
                     "head_entropy": ("view", "layer", "head")},
    "probe_robustness": {"score": ("subset", "probe"), "f1": ("subset", "probe"), "accuracy": ("subset",),
                         "accuracy_corrupt": ("subset",), "drop": ("subset",), "size": ("subset",),
                         "correct": ("prompt",), "correct_corrupt": ("prompt",), "bin_drop": ("probe", "bin"),
                         "bin_count": ("probe", "bin"), "bin_lo": ("probe", "bin"), "bin_hi": ("probe", "bin"),
                         "correlation": ("probe",)},
    "head_scores": {"previous_token": ("prompt", "layer", "head"), "duplicate_token": ("prompt", "layer", "head"),
                    "induction": ("prompt", "layer", "head"), "copy_suppression_proxy": ("prompt", "layer", "head"),
                    "successor": ("layer", "head"), "uniform": ("score",)},
    "successor_ov": {"successor_ov": ("layer", "head"), "successor_ov_by_list": ("list", "layer", "head"),
                     "n_examples": ("list",), "chance": ("list",)},
    "eap": _EDGES, "eap_ig": _EDGES, "edge_patching": _EDGES,
    "path_patching": {"effect": ("sender", "prompt"), "patched_logit_diff": ("sender", "prompt"),
                      "relative_effect": ("sender",), "clean_logit_diff": ("prompt",), "corrupt_logit_diff": ("prompt",)},
    "cspa": {"cspa": ("layer", "head"), "kl_cspa": ("layer", "head"), "kl_ablated": ("layer", "head")},
    "self_repair": {"direct_effect": ("layer", "head"), "logit_change": ("layer", "head"),
                    "self_repair": ("layer", "head"), "n_tokens": ("layer", "head"),
                    "sequence_direct_effect": ("sequence", "layer", "head"),
                    "sequence_logit_change": ("sequence", "layer", "head")},
    "ioi_components": {"copy_score": ("layer", "head"), "attention": ("layer", "head", "word"),
                       "name_mover": ("layer", "head"), "s_inhibition": ("layer", "head"),
                       "s2i_logit_diff_delta": ("layer", "head"), "s2i_attention_delta": ("layer", "head", "word"),
                       "clean_logit_diff": ("prompt",), "induction": ("layer", "head"),
                       "duplicate_token": ("layer", "head"), "previous_token": ("layer", "head")},
    "greater_than_components": {"yy_attention": ("layer", "head"), "yy_attention_prob": ("layer", "head"),
                                "yy_logit": ("layer", "head"), "mlp_logit_diff": ("layer",),
                                "start_year": ("prompt",), "yy_position": ("prompt",)},
    "backup_heads": {"copy_score": ("layer", "head"), "candidate": ("layer", "head"), "name_mover": ("layer", "head"),
                     "direct_effect": ("condition", "prompt", "layer", "head"), "logit_diff": ("condition", "prompt"),
                     "backup": ("layer", "head"), "summed_backup": ()},
    "neuron_discovery": _NEURONS,
    "neuron_activations": {"activation": ("prompt", "layer", "neuron", "position")},
    "cot_neurons": {**_NEURONS, "activation": ("variant", "unit"), "correct": ("ablation", "variant", "prompt"),
                    "p_answer": ("ablation", "variant", "prompt"), "accuracy": ("ablation", "variant")},
    "binding_ids": {"correct": ("prompt", "query"), "factor_correct": ("target", "prompt", "query"),
                    "position_correct": ("prompt", "query"), "swap": ("intervention", "vector", "prompt", "query"),
                    "accuracy": (), "factor_accuracy": ("target",), "position_accuracy": (),
                    "swap_accuracy": ("intervention", "vector"), "delta_norm": ("intervention", "depth")},
    # binding-iclr's tests (``attrs["measure"]``): the key is "<method>/<measure>"
    "binding_ids/factorization": {
        "factor_logprob": ("side", "swap_entity", "swap_attribute", "query", "answer", "prompt"),
        "factor_mean": ("side", "swap_entity", "swap_attribute", "query", "answer"),
        "factor_expected": ("side", "swap_entity", "swap_attribute", "query"),
        "outcome_accuracy": ("side", "swap_entity", "swap_attribute")},
    "binding_ids/position": {"position_logprob": ("target", "offset", "query", "answer", "prompt"),
                             "position_mean": ("target", "offset", "query", "answer")},
    "binding_ids/means": {"means_logprob": ("intervention", "vector", "query", "answer", "prompt"),
                          "means_correct": ("intervention", "vector", "query", "prompt"),
                          "means_accuracy": ("intervention", "vector", "query"),
                          "delta": ("kind", "token", "depth", "d_model"),
                          "random_vector": ("kind", "token", "depth", "d_model"), "delta_norm": ("kind", "token", "depth")},
    "binding_ids/cyclic": {"cyclic_logprob": ("cycle", "target", "query", "answer", "prompt"),
                           "cyclic_intended": ("cycle", "target", "query"),
                           "cyclic_correct": ("cycle", "target", "query", "prompt"), "cyclic_accuracy": ("target",),
                           "delta": ("kind", "k", "token", "depth", "d_model")},
    "binding_ids/pairwise": {"pairwise_logprob": ("switch", "target", "query", "answer", "prompt"),
                             "pairwise_intended": ("switch", "target", "query"),
                             "pairwise_correct": ("switch", "target", "query", "prompt"),
                             "pairwise_accuracy": ("target",), "delta": ("kind", "k", "token", "depth", "d_model")},
    "binding_ids/cross_subspace": {"cross_logprob": ("source", "cycle", "query", "answer", "prompt"),
                                   "cross_correct": ("source", "cycle", "query", "prompt"),
                                   "cross_accuracy": ("source",), "control_accuracy": (),
                                   "delta": ("kind", "k", "token", "depth", "d_model"),
                                   "source_delta": ("kind", "j", "token", "depth", "d_model")},
    "binding_ids/mcq": {"mcq_logprob": ("width", "query", "answer", "prompt"),
                        "mcq_swapped": ("width", "query", "prompt"), "mcq_swap_accuracy": ("width",),
                        "control_accuracy": ()},
    "binding_ids/subspace": {"subspace_logprob": ("root", "x", "y", "query", "answer", "prompt"),
                             "subspace_accuracy": ("root", "x", "y"), "delta2_coords": ("basis",),
                             "delta": ("kind", "k", "token", "depth", "d_model")},
}
# method -> {variable: dims}: variables that may be absent, checked when present
OPTIONAL: dict[str, dict[str, tuple[str, ...]]] = {
    "attention": {"attention": ("prompt", "layer", "head", "query", "key"), "head_entropy": ("view", "layer", "head"),
                  "statement_attention": ("view", "layer", "head", "slot"), "pruned": ("layer", "head")},
    # bin_accuracy, the repository's bins_acc (2026-12-08): files written before lack it
    "probe_robustness": {"baseline_f1": ("subset", "probe"), "bin_accuracy": ("probe", "bin")},
    # what the ablation leaves in place (2026-12-06) and the final norm's share (2026-12-07): older files lack them
    "self_repair": {"replaced_direct_effect": ("layer", "head"), "norm_rescaling": ("layer", "head")},
    # raw logits beside the log-probabilities (2026-12-06): files written before lack them
    "binding_ids/position": {"position_logit": ("target", "offset", "query", "answer", "prompt")},
    "binding_ids/mcq": {"mcq_balanced_swap_accuracy": ("width",)},
    # Table 2's second row (2026-12-06): files written before lack it
    "binding_ids/cross_subspace": {"cross_intended_logprob": ("source",)},
    # Fig. 5's logit-difference statistic (2026-12-08): files written before lack it
    "binding_ids/subspace": {"subspace_margin": ("root", "x", "y")},
    "backup_heads": {"in_circuit": ("layer", "head"), "summed_backup_in_circuit": (),
                     "summed_backup_outside_circuit": ()},
    # the concept rule's variables (2026-11-30): files written before lack them
    **{m: {"concept_matches": ("unit", "concept"), "concepts": ("unit",)} for m in ("neuron_discovery", "cot_neurons")},
    "mechanistic_probe": {"group_prompts": (),
                          **{v: ("probe", "layer") for v in ("baseline_f1", "baseline_accuracy", "score")},
                          **{v: ("probe",) for v in ("baseline_f1_all", "baseline_accuracy_all", "score_all")}},
}
FRACTIONS = ("accuracy", "p_answer", "correct", "mean_p_answer", "f1", "f1_all", "majority", "head_entropy",
             "statement_attention", "accuracy_unpruned", "p_answer_unpruned", "accuracy_corrupt", "clean_p_base",
             "clean_p_source", "factor_accuracy", "position_accuracy", "swap_accuracy", "frequency", "outcome_accuracy",
             "means_accuracy", "means_correct", "cyclic_accuracy", "cyclic_correct", "pairwise_accuracy",
             "pairwise_correct", "subspace_accuracy", "bin_accuracy",
             "cross_accuracy", "cross_correct", "control_accuracy", "mcq_swap_accuracy", "mcq_swapped",
             "mcq_balanced_swap_accuracy")


def assert_valid_result(ds: xr.Dataset) -> None:
    """Raise ``AssertionError`` naming the first way ``ds`` departs from its method's schema
    (dims of every variable, provenance attrs, probabilities in [0, 1], coordinates)."""
    for a in REQUIRED_ATTRS:
        assert a in ds.attrs, f"attrs[{a!r}] missing"
    json.loads(ds.attrs["task_params"])
    method = ds.attrs["method"]
    # sweeps lead with ``model`` (several models) and/or ``checkpoint`` (revisions)
    lead = tuple(d for d in ("model", "checkpoint") if d in ds.dims)
    if ds.attrs["method"] == "mechanistic_probe" and "group" in ds.dims:
        lead += ("group",)  # one probe per group of prompts (the repository's ProofWriter sets of m statements)
    if method in ("activation_patching", "attribution_patching"):
        _patching(ds, lead)
    else:
        if ds.attrs.get("measure", "accuracy") != "accuracy":
            method = f"{method}/{ds.attrs['measure']}"
        assert method in SCHEMAS, f"unknown method {method!r}; known: {', '.join(sorted(SCHEMAS))}"
        for v, dims in SCHEMAS[method].items():
            assert v in ds.data_vars, f"{method} result lacks {v!r}"
            assert ds[v].dims in (lead + dims, dims if v == "uniform" else lead + dims), \
                f"{v} has dims {ds[v].dims}, expected {lead + dims}"
        for v, dims in OPTIONAL.get(method, {}).items():
            # a probe's baseline is the same for every checkpoint of a sweep: no checkpoint dim
            shared = tuple(d for d in lead if d != "checkpoint") + dims
            assert v not in ds.data_vars or ds[v].dims in (lead + dims, dims, lead[:1] + dims, shared), \
                f"{v} has dims {ds[v].dims}, expected {lead + dims}"
    for v in FRACTIONS:
        if v in ds.data_vars:
            vals = np.asarray(ds[v].values, dtype=float)
            vals = vals[np.isfinite(vals)]
            assert np.all((vals >= 0) & (vals <= 1)), f"{v} outside [0, 1]"
    if "prompt" in ds.dims:
        assert list(ds["prompt"].values) == list(range(ds.sizes["prompt"])), "prompt must be 0..N-1"
    if "checkpoint" in lead:
        assert "step" in ds.coords and ds["step"].dims in (("checkpoint",), ("model", "checkpoint")), \
            "a sweep needs the step coordinate"
    if "model" in lead:
        assert list(ds["model"].values) == ds.attrs["model"].split(","), "attrs['model'] must list the models"


def _patching(ds: xr.Dataset, lead: tuple[str, ...]) -> None:
    site_vars = site_variables(ds)
    assert site_vars, f"no site variable ({[var_name(s) for s in SITES]}) in {list(ds.data_vars)}"
    for v in site_vars:
        want = lead + ("prompt", "layer", "position") + ((unit_dim(v),) if unit_dim(v) else ())
        assert ds[v].dims == want, f"{v} has dims {ds[v].dims}, expected {want}"
        assert ds[v].attrs.get("metric") == ds.attrs["metric"], f"{v}.attrs['metric'] != attrs['metric']"
    for v in ("clean_p_base", "clean_p_source"):
        assert v in ds.data_vars, f"{v} missing"
        assert ds[v].dims == lead + ("prompt",), f"{v} has dims {ds[v].dims}"
    # tokens differ between models: over several models these coordinates may have the model dim
    per_model = ("model",) if "model" in lead else ()
    for c in _PROMPT_COORDS:
        assert c in ds.coords and ds[c].dims in (("prompt",), per_model + ("prompt",)), \
            f"coordinate {c!r} along prompt missing"
    assert "token" in ds.coords and ds["token"].dims in (("prompt", "position"), per_model + ("prompt", "position")), \
        "token coordinate missing"
