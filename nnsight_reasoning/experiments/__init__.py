"""One module per experiment. Each holds the experiment's whole computation: a compute
function turned into the public ``nr.<noun>`` by :func:`nnsight_reasoning.runner.experiment`,
and ``summarize(ds)``, what the CLI prints for its result (``reason-interp`` and ``show``)."""
from __future__ import annotations

import importlib
from typing import Any

# attrs["method"] -> the module whose summarize(ds) describes such a result
_MODULES = {"activation_patching": "patch", "attribution_patching": "patch", "evaluate": "evaluate",
            "logit_lens": "lens",
            "attention": "attention", "mechanistic_probe": "probe", "head_pruning": "pruning", "probe_robustness": "robustness", "head_scores": "heads", "successor_ov": "heads", "eap": "circuit",
            "eap_ig": "circuit", "edge_patching": "circuit", "path_patching": "path_patching",
            "ioi_components": "ioi_components", "greater_than_components": "greater_than_components", "backup_heads": "backup_heads", "cspa": "copy_suppression", "self_repair": "self_repair", "cot_neurons": "neurons", "neuron_discovery": "neurons",
            "cot_generation": "cot_generation",
            "binding_ids": "binding"}


def summarize(ds: Any) -> list[Any]:
    """Lines and rich tables that describe a result (its experiment's ``summarize``); [] for a
    method without one."""
    name = _MODULES.get(str(ds.attrs.get("method", "")))
    if name is None:
        return []
    if "model" in ds.dims:  # several models: each one's summary under its name
        from ..results.checkpoints import one_model

        return [item for m in ds["model"].values
                for item in [f"[bold]model {m}[/]", *summarize(one_model(ds, str(m)))]]
    return importlib.import_module(f"{__name__}.{name}").summarize(ds)
