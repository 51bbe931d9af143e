"""Site names (SPEC) resolved to module paths per architecture family.

Per-architecture knowledge is data: one :class:`Architecture` entry per Hugging Face
``model_type``. Adding a family is one entry here plus one test parameter.

Sites, in the order a decoder layer computes them:

``head``   one attention head's output before the output projection (input of ``o_proj``),
           shape per position ``(n_heads, head_dim)``
``attn``   attention block output (after the output projection), ``(d_model,)``
``mlp``    MLP block output, ``(d_model,)``
``resid``  residual stream after the layer, ``(d_model,)``
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .errors import UsageError

SITES: tuple[str, ...] = ("head", "attn", "mlp", "resid")
POSITIONS: tuple[str, ...] = ("last", "all")


@dataclass(frozen=True)
class Architecture:
    """Module paths of one model family, relative to the HF ``*ForCausalLM`` root."""

    layers: str  # the ModuleList of decoder layers
    attn: str  # attention module, relative to a layer; output[0] is the block output
    o_proj: str  # attention output projection, relative to a layer; its input = heads
    mlp: str  # MLP module, relative to a layer
    embed: str  # token embedding (its output is interpolated for integrated gradients)
    ln_attn: str  # the norm in front of attention, relative to a layer (edge graphs split its input per head)
    ln_mlp: str  # the norm in front of the MLP, relative to a layer
    final_norm: str  # the norm in front of the unembedding
    mlp_out: str  # the MLP's output projection, relative to a layer; its input = the neurons
    n_heads_attr: str = "num_attention_heads"
    unembed: str = "lm_head"


ARCHITECTURES: dict[str, Architecture] = {
    "gpt_neox": Architecture("gpt_neox.layers", "attention", "attention.dense", "mlp", "gpt_neox.embed_in",
                             "input_layernorm", "post_attention_layernorm", "gpt_neox.final_layer_norm",
                             "mlp.dense_4h_to_h"),
    "gpt2": Architecture("transformer.h", "attn", "attn.c_proj", "mlp", "transformer.wte", "ln_1", "ln_2",
                         "transformer.ln_f", "mlp.c_proj", "n_head"),
    **{name: Architecture("model.layers", "self_attn", "self_attn.o_proj", "mlp", "model.embed_tokens",
                          "input_layernorm", "post_attention_layernorm", "model.norm", "mlp.down_proj")
       for name in ("llama", "mistral", "qwen2", "gemma")},
}


def parallel_residual(model: Any) -> bool:
    """Whether attention and MLP of a layer read the same residual stream (Pythia/GPT-NeoX),
    so that a layer's heads feed only later layers' MLPs."""
    return bool(getattr(model.config, "use_parallel_residual", False))


def var_name(site: str) -> str:
    """Result variable of a site. ``head`` is stored as ``heads``: xarray forbids a data
    variable named like one of its own dimensions (the ``head`` dim)."""
    return "heads" if site == "head" else site


def architecture(model: Any) -> Architecture:
    """The :class:`Architecture` for a loaded model, or a clear error."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UsageError(
            f"architecture {model_type!r} has no site map yet; supported: "
            f"{', '.join(sorted(ARCHITECTURES))} (add one entry to nnsight_reasoning/sites.py)"
        )
    return ARCHITECTURES[model_type]


def dims(model: Any) -> dict[str, int]:
    """n_layers, n_heads, d_model, head_dim of a loaded model."""
    cfg = model.config
    arch = architecture(model)
    n_heads = getattr(cfg, arch.n_heads_attr)
    return {"n_layers": cfg.num_hidden_layers, "n_heads": n_heads, "d_model": cfg.hidden_size,
            "head_dim": cfg.hidden_size // n_heads}


def check_sites(sites: list[str] | tuple[str, ...] | str) -> list[str]:
    """Validated site names in forward (computation) order."""
    if isinstance(sites, str):
        sites = [sites]
    if not sites:
        raise UsageError(f"give at least one site; choose from: {', '.join(SITES)}")
    for s in sites:
        if s not in SITES:
            raise UsageError(f"unknown site {s!r}; choose from: {', '.join(SITES)}")
    return [s for s in SITES if s in sites]


def check_layers(layers: Sequence[int] | None, n_layers: int) -> list[int]:
    """Sorted unique layer indices (all when None), or an error naming the valid range."""
    return _check_indices("layer", layers, n_layers)


def check_heads(heads: Sequence[int] | None, n_heads: int) -> list[int]:
    """Sorted unique head indices (all when None), or an error naming the valid range."""
    return _check_indices("head", heads, n_heads)


def _check_indices(kind: str, values: Sequence[int] | None, n: int) -> list[int]:
    if values is None:
        return list(range(n))
    bad = [v for v in values if not isinstance(v, int) or not 0 <= v < n]
    if bad:
        raise UsageError(f"{kind} {bad[0]} is out of range: this model has {kind}s 0..{n - 1}")
    return sorted(set(values))


def resolve(obj: Any, dotted: str) -> Any:
    """Follow a dotted module path on an nnsight Envoy (or a torch module)."""
    for part in dotted.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj
