"""Site names (SPEC) resolved to module paths per architecture family.

Per-architecture knowledge is data: one :class:`Architecture` entry per Hugging Face
``model_type``. Adding a family is one entry here plus one test parameter.

Sites, in the order the model computes them:

``embed``  the token embeddings entering the first layer, ``(d_model,)``; lm-arithmetic's
           "layer -1", stored at layer coordinate -1 (patching only)
``embed_dim`` one dimension of ``embed`` (of ``d_model``), stored at layer -1 (patching only)
``attn_pattern`` one head's whole attention pattern (every query position), ``(T, T)``;
           lm-arithmetic's attention-head intervention; stored at the last position
``attn_layer_pattern`` every head's whole attention pattern of a layer at once, ``(heads, T, T)``;
           lm-arithmetic's attention-layer intervention; stored at the last position
``attn_weights`` one head's attention probabilities of one query position (the softmax row
           that weights the values), ``(T,)``; patching it keeps the base run's values
``head``   one attention head's output before the output projection (input of ``o_proj``),
           shape per position ``(n_heads, head_dim)``
``attn``   attention block output (after the output projection), ``(d_model,)``
``neuron`` one MLP hidden unit (input of the MLP's output projection), ``(n_neurons,)``
``mlp``    MLP block output, ``(d_model,)``
``mlp_dim`` one dimension of ``mlp`` (of ``d_model``): with ``embed_dim``, lm-arithmetic's
           single "neurons" (``intervention_loc=all|single_layer_N``; patching only)
``resid``  residual stream after the layer, ``(d_model,)``
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Sequence

from .errors import UsageError, as_index

SITES: tuple[str, ...] = ("embed", "embed_dim", "attn_pattern", "attn_layer_pattern", "attn_weights", "head", "attn",
                          "neuron", "mlp", "mlp_dim", "resid")
#: Sites made of units, with the dim that indexes them (and whose size ``dims`` gives as
#: ``n_<dim>s``).
UNIT_DIMS: dict[str, str] = {"embed_dim": "dimension", "attn_pattern": "head", "attn_weights": "head", "head": "head",
                             "neuron": "neuron", "mlp_dim": "dimension"}
#: Sites that activation patching covers but attribution patching does not (yet).
EXACT_ONLY_SITES: tuple[str, ...] = ("embed", "embed_dim", "attn_pattern", "attn_layer_pattern", "attn_weights",
                                     "neuron", "mlp_dim")
#: Sites that edit the embeddings (the first layer's input), stored at layer ``EMBED_LAYER``.
EMBED_SITES: tuple[str, ...] = ("embed", "embed_dim")
#: Sites patched at every position at once (stored at each prompt's last position).
WHOLE_PROMPT_SITES: tuple[str, ...] = ("attn_pattern", "attn_layer_pattern")
#: Sites that edit the attention probabilities (they need eager attention); the values stay the base run's.
PROB_SITES: tuple[str, ...] = ("attn_pattern", "attn_layer_pattern", "attn_weights")
#: The layer coordinate of the ``embed`` site (lm-arithmetic numbers the embeddings layer -1).
EMBED_LAYER = -1
POSITIONS: tuple[str, ...] = ("last", "all")


#: Features an architecture can refuse (``Architecture.unsupported``), with the words used
#: in the error message. Everything else (patching, attribution, attention, neuron reads and
#: ablations, residual edits) works for every entry of :data:`ARCHITECTURES`.
FEATURES: dict[str, str] = {
    "edges": "the component graph (edge attribution, edge patching, circuits)",
    "logit_effects": "direct logit effects (head effects, neuron contributions, neuron logit lens)",
}

#: Final norm kinds: whether the norm centres its input, and the offset of its gain (the
#: norm multiplies by ``offset + weight``: Gemma's RMSNorm stores ``weight`` = γ − 1).
NORMS: dict[str, tuple[bool, float]] = {
    "layernorm": (True, 0.0),
    "rmsnorm": (False, 0.0),
    "gemma_rmsnorm": (False, 1.0),
}


@dataclass(frozen=True)
class Architecture:
    """Module paths and layout facts of one model family, relative to the HF ``*ForCausalLM`` root.

    The backend reads these fields instead of inspecting module classes; a feature listed in
    ``unsupported`` is refused (:func:`require`) with the reason given there.
    """

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
    # the output projections (o_proj, mlp_out) store their weight as (in, out) rather than
    # torch.nn.Linear's (out, in): GPT-2's Conv1D
    transposed: bool = False
    # config attribute holding the head width when it is set (Gemma-7B: 256, not 3072 / 16);
    # None, or the attribute unset: d_model / n_heads
    head_dim_attr: str | None = "head_dim"
    # config attributes of the MLP width (the number of neurons), the first one set wins;
    # none set: neuron_factor · d_model (GPT-2's n_inner = None means 4 · n_embd)
    neuron_attrs: tuple[str, ...] = ("intermediate_size",)
    neuron_factor: int | None = None
    final_norm_kind: str = "rmsnorm"  # a key of NORMS
    norm_eps_attr: str = "rms_norm_eps"  # config attribute of the final norm's epsilon
    # nnsight ``.source`` path, from the attention module, to the operation whose output is the
    # attention probabilities that multiply the values (transformers' eager_attention_forward:
    # its dropout, the identity in eval mode); the trace edits that output in place
    attn_probs: tuple[str, ...] = ("attention_interface_1", "nn_functional_dropout_0")
    # how a decoder layer receives its attention mask: a keyword, or a position among its
    # arguments (GPT-2); None where layers take several masks (Gemma-2's sliding-window
    # layers), which patching engine v2's packed batches cannot give them (it uses v1 there)
    mask_arg: str | int | None = "attention_mask"
    # the value projection, relative to a layer, and how its weight holds the heads' values:
    # "separate" (a v_proj Linear, n_kv_heads · head_dim outputs, grouped-query heads share one),
    # "neox" (GPT-NeoX's fused query_key_value: per head q, k, v of head_dim each), "gpt2"
    # (GPT-2's Conv1D c_attn, (in, out): q, k, v blocks of d_model each); read by the static
    # OV circuit (successor heads) and by path patching into a head's keys or values; with the
    # "separate" layout ``k_proj`` is the key projection (the fused layouts hold it in v_proj)
    v_proj: str = "self_attn.v_proj"
    qkv_layout: str = "separate"
    k_proj: str = "self_attn.k_proj"
    # config attribute of the cap c on the final logits, c·tanh(logits / c) (Gemma 2's
    # final_logit_softcapping); None, or the attribute unset: the logits are not capped
    logit_softcap_attr: str | None = None
    # feature (a key of FEATURES) -> why this family cannot do it
    unsupported: dict[str, str] = field(default_factory=dict, hash=False)


_LLAMA_LIKE = dict(layers="model.layers", attn="self_attn", o_proj="self_attn.o_proj", mlp="mlp",
                   embed="model.embed_tokens", ln_attn="input_layernorm", ln_mlp="post_attention_layernorm",
                   final_norm="model.norm", mlp_out="mlp.down_proj")
_GEMMA2_POST_NORMS = ("attention and MLP outputs pass through their own RMSNorm (post_attention_layernorm, "
                      "post_feedforward_layernorm) before they join the residual stream, so a head's or "
                      "neuron's share of the output projection is not what reaches the residual stream")

ARCHITECTURES: dict[str, Architecture] = {
    "gpt_neox": Architecture("gpt_neox.layers", "attention", "attention.dense", "mlp", "gpt_neox.embed_in",
                             "input_layernorm", "post_attention_layernorm", "gpt_neox.final_layer_norm",
                             "mlp.dense_4h_to_h", head_dim_attr=None, final_norm_kind="layernorm",
                             norm_eps_attr="layer_norm_eps", v_proj="attention.query_key_value", qkv_layout="neox"),
    "gpt2": Architecture("transformer.h", "attn", "attn.c_proj", "mlp", "transformer.wte", "ln_1", "ln_2",
                         "transformer.ln_f", "mlp.c_proj", "n_head", transposed=True, head_dim_attr=None,
                         neuron_attrs=("n_inner",), neuron_factor=4, final_norm_kind="layernorm",
                         norm_eps_attr="layer_norm_epsilon", mask_arg=2, v_proj="attn.c_attn", qkv_layout="gpt2"),
    # GPT-J (Stolfo et al.'s main model): attention and MLP run in parallel on one LayerNorm
    "gptj": Architecture("transformer.h", "attn", "attn.out_proj", "mlp", "transformer.wte", "ln_1", "ln_1",
                         "transformer.ln_f", "mlp.fc_out", "n_head", head_dim_attr=None, neuron_attrs=("n_inner",),
                         neuron_factor=4, final_norm_kind="layernorm", norm_eps_attr="layer_norm_epsilon",
                         v_proj="attn.v_proj",
                         unsupported={"edges": "attention and MLP read one shared LayerNorm (ln_1) in parallel, "
                                               "which the component graph does not model yet"}),
    **{name: Architecture(**_LLAMA_LIKE) for name in ("llama", "mistral", "qwen2")},
    "gemma": Architecture(**_LLAMA_LIKE, final_norm_kind="gemma_rmsnorm"),
    "gemma2": Architecture(**{**_LLAMA_LIKE, "ln_mlp": "pre_feedforward_layernorm"}, final_norm_kind="gemma_rmsnorm",
                           mask_arg=None, logit_softcap_attr="final_logit_softcapping",
                           unsupported={
                               "edges": _GEMMA2_POST_NORMS,
                               "logit_effects": "the logits are soft-capped (tanh), so no component's effect on "
                                                "them is linear; and the " + _GEMMA2_POST_NORMS,
                           }),
}


def parallel_residual(model: Any) -> bool:
    """Whether attention and MLP of a layer read the same residual stream (Pythia/GPT-NeoX with
    ``use_parallel_residual``; GPT-J, whose one norm feeds both), so that a layer's heads feed
    only later layers' MLPs and no stream lies between a layer's attention and its MLP."""
    arch = architecture(model)
    return bool(getattr(model.config, "use_parallel_residual", False)) or arch.ln_mlp == arch.ln_attn


def var_name(site: str) -> str:
    """Result variable of a site. ``head`` and ``neuron`` are stored as ``heads`` and
    ``neurons``: xarray forbids a data variable named like one of its own dimensions."""
    return site + "s" if UNIT_DIMS.get(site) == site else site


def unit_dim(var: str) -> str | None:
    """The unit dim (``head``, ``neuron``, ``dimension``) of a site variable, None for whole-vector sites."""
    return next((d for s, d in UNIT_DIMS.items() if var_name(s) == var), None)


def architecture(model: Any) -> Architecture:
    """The :class:`Architecture` for a loaded model, or a clear error."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UsageError(
            f"architecture {model_type!r} has no site map yet; supported: "
            f"{', '.join(sorted(ARCHITECTURES))} (add one entry to nnsight_reasoning/sites.py)"
        )
    return ARCHITECTURES[model_type]


def require(model: Any, feature: str) -> Architecture:
    """The :class:`Architecture` of ``model`` if it can do ``feature`` (a key of
    :data:`FEATURES`), else a one-line error giving the reason."""
    arch = architecture(model)
    if feature in arch.unsupported:
        raise UsageError(f"{FEATURES[feature]} is not supported for {model.config.model_type} models: "
                         f"{arch.unsupported[feature]}")
    return arch


def dims(model: Any) -> dict[str, int]:
    """n_layers, n_heads, d_model, head_dim (the per-head width of the output projection's
    input, ``n_heads · head_dim`` in all), n_neurons (the MLP output projection's input
    width) and n_dimensions (= d_model, the units of ``embed_dim`` and ``mlp_dim``) of a
    loaded model, from its config as :data:`ARCHITECTURES` says to read it."""
    cfg = model.config
    arch = architecture(model)
    n_heads = getattr(cfg, arch.n_heads_attr)
    d_model = cfg.hidden_size
    head_dim = getattr(cfg, arch.head_dim_attr, None) if arch.head_dim_attr else None
    n_neurons = next((getattr(cfg, a) for a in arch.neuron_attrs if getattr(cfg, a, None)), None)
    if n_neurons is None:
        if arch.neuron_factor is None:
            raise UsageError(f"this {cfg.model_type} config sets none of {', '.join(arch.neuron_attrs)}: "
                             f"cannot tell the MLP width")
        n_neurons = arch.neuron_factor * d_model
    return {"n_layers": cfg.num_hidden_layers, "n_heads": n_heads, "d_model": d_model,
            "head_dim": int(head_dim) if head_dim else d_model // n_heads, "n_neurons": int(n_neurons),
            "n_dimensions": d_model}


def context_length(model: Any) -> int | None:
    """The most positions the model takes (its config's ``max_position_embeddings``; GPT-2's
    ``n_positions`` answers to that name), or None where the config sets none."""
    return getattr(getattr(model, "config", None), "max_position_embeddings", None) or None


def final_norm_spec(model: Any) -> tuple[bool, float, float]:
    """Whether the final norm centres its input, its gain offset (the norm multiplies by
    offset + weight) and its epsilon."""
    arch = architecture(model)
    center, offset = NORMS[arch.final_norm_kind]
    return center, offset, float(getattr(model.config, arch.norm_eps_attr))


def logit_softcap(model: Any) -> float | None:
    """The cap c of the model's final logits, c·tanh(logits / c) (Gemma 2), or None."""
    attr = architecture(model).logit_softcap_attr
    cap = getattr(model.config, attr, None) if attr else None
    return float(cap) if cap else None


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


def check_layers(layers: Sequence[int] | int | None, n_layers: int, *, embeddings: bool = False) -> list[int]:
    """Sorted unique layer indices (all when None; one integer is one layer), or an error naming
    the valid range; ``embeddings``: -1 (:data:`EMBED_LAYER`, the embeddings) is a layer too."""
    low = EMBED_LAYER if embeddings else 0
    return _check_indices("layer", layers, n_layers, low, " (-1: the embeddings)" if embeddings else "")


def check_heads(heads: Sequence[int] | int | None, n_heads: int) -> list[int]:
    """Sorted unique head indices (all when None; one integer is one head), or an error naming
    the valid range."""
    return _check_indices("head", heads, n_heads)


def _check_indices(kind: str, values: Any, n: int, low: int = 0, note: str = "") -> list[int]:
    if values is None:
        return list(range(low, n))
    if not isinstance(values, Iterable) or isinstance(values, (str, bytes)) or getattr(values, "ndim", 1) == 0:
        values = [values]  # one value (refused below unless it is an integer)
    values = list(values)
    if not values:
        raise UsageError(f"no {kind}s given: this model has {kind}s {low}..{n - 1}{note}; leave the choice out "
                         f"for all of them")
    out = []
    for v in values:
        i = as_index(v)
        if i is None:
            raise UsageError(f"{kind} {v!r} is not an integer: this model has {kind}s {low}..{n - 1}{note}")
        if not low <= i < n:
            raise UsageError(f"{kind} {i} is out of range: this model has {kind}s {low}..{n - 1}{note}")
        out.append(i)
    return sorted(set(out))


def resolve(obj: Any, dotted: str) -> Any:
    """Follow a dotted module path on an nnsight Envoy (or a torch module)."""
    for part in dotted.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj
