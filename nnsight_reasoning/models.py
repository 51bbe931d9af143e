"""Loading models through nnsight: the embedded model, a Hugging Face id, or a local path.

Every model comes back as an ``nnsight.modeling.transformers.TransformersModel`` so users
can also ``model.trace(...)`` it themselves. Provenance (name, local path, revision) is
kept on the model for result files.
"""
from __future__ import annotations

import functools
import os
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from . import embedded
from .errors import UsageError

# Provenance lives beside the model, not on it: an attribute on the model would be pickled
# into every NDIF request and fail to unpickle on a server without this package.
_INFO: "weakref.WeakKeyDictionary[Any, ModelInfo]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class ModelInfo:
    """Where a model came from: ``name`` (HF id or "embedded"), ``path`` (local dir or "").

    ``load_kwargs`` are the options it was loaded with, so a checkpoint sweep can load the
    other revisions the same way.
    """

    name: str
    path: str
    revision: str
    load_kwargs: dict = field(default_factory=dict, compare=False, repr=False)


def load_model(
    name: str | Path | None = None,
    revision: str | None = None,
    *,
    device: str | None = None,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "eager",
    adapter: str | Path | None = None,
    **kwargs: Any,
):
    """Load a causal LM as an nnsight ``TransformersModel``.

    Parameters
    ----------
    name : None or "embedded" for the project's embedded model; a Hugging Face id
        (``"EleutherAI/pythia-160m"``) or a local model directory otherwise.
    revision : embedded/Pythia-style revision (``"step0"``, ``"step3000"``, ``"main"``). For a
        local directory holding one sub-directory per revision, picks that sub-directory.
    device : e.g. ``"cuda"``; weights load lazily (nnsight meta model) and move on first use.
    dtype : weight dtype; fp32 by default so numbers match a plain HF forward.
    attn_implementation : "eager" (default) so attention probabilities can be read.
    adapter : a PEFT adapter (LoRA …; a directory or Hugging Face id) fine-tuned on this base
        model, merged into its weights at load (e.g. Goat, LoRA over LLaMA-7B, as
        lm-arithmetic loads it). The merged model has the base model's modules, so every
        site works; it runs locally only (NDIF serves base weights). Needs ``peft``.

    Examples
    --------
    >>> import nnsight_reasoning as nr
    >>> model = nr.load_model()                       # embedded, revision "main"
    >>> model = nr.load_model(revision="step0")       # the untrained checkpoint
    """
    from nnsight.modeling.transformers import TransformersModel

    name = "embedded" if name is None else str(name)
    options = {"device": device, "dtype": dtype, "attn_implementation": attn_implementation, **kwargs}
    if adapter is not None:
        options["adapter"] = str(adapter)
    if name == embedded.EMBEDDED_NAME:
        try:
            path = embedded.revision_path(revision or "main")
        except FileNotFoundError as e:
            raise UsageError(str(e)) from None
        info = ModelInfo(name, str(path), revision or "main", options)
        source, load_kwargs = str(path), {}
    elif Path(name).expanduser().exists():
        path = Path(name).expanduser().resolve()
        if revision and (path / revision / "config.json").is_file():
            path = path / revision
        elif revision:
            raise UsageError(f"local model {name} has no revision directory {revision!r} "
                             f"(expected {path / revision}/config.json)")
        if not (path / "config.json").is_file():
            raise UsageError(f"{path} is not a Hugging Face model directory (no config.json)")
        info = ModelInfo(name, str(path), revision or "", options)
        source, load_kwargs = str(path), {}
    elif name.startswith(("/", "./", "../", "~")):
        raise UsageError(f"no such model directory: {name}")
    else:
        info = ModelInfo(name, "", revision or "main", options)
        source, load_kwargs = name, ({"revision": revision} if revision else {})
        if not hub_offline() and not hub_reachable():  # do not let the Hub client retry for half a minute
            snapshot = _cached_snapshot(name, revision)
            if snapshot is None:
                raise UsageError(f"model {name!r}{' revision ' + repr(revision) if revision else ''} is not a local "
                                 f"directory, not in the local Hub cache, and the Hub ({_hub_endpoint()}) is "
                                 "unreachable: pass a local model directory, or connect and run again")
            # the cached copy, read from its folder without the network (transformers' own offline
            # loading still asks the Hub for optional files); NDIF keys and provenance keep the id
            # and the revision
            from .nnsight_shim import name_local_model

            source = snapshot
            name_local_model(snapshot, name)
    if device is not None:
        kwargs.setdefault("device_map", device)
    offload = _offload_folder(kwargs)
    try:
        if adapter is not None:
            model = _with_adapter(source, str(adapter), kwargs.pop("tokenizer", source), dtype, attn_implementation,
                                  {**load_kwargs, **kwargs})
        else:
            model = TransformersModel(source, task="text-generation", tokenizer=kwargs.pop("tokenizer", source),
                                      dtype=dtype, attn_implementation=attn_implementation, **load_kwargs, **kwargs)
    except UsageError:
        raise
    except Exception as e:  # transformers raises OSError, ValueError or a bare Exception here
        first = _first_line(e)
        raise UsageError(f"could not load model {name!r}"
                         f"{' revision ' + repr(revision) if revision else ''}: {first[:200]} "
                         f"(check the id/path; offline, use a local directory)") from None
    _INFO[model] = info
    if offload is not None:  # the weights offloaded to disk live as long as the model
        import shutil

        weakref.finalize(model, shutil.rmtree, offload, True)
    return model


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def parse_device_map(value: str) -> str | dict:
    """A device map as ``--device-map`` takes it: one of accelerate's strategies (``auto``,
    ``balanced``, ``balanced_low_0``, ``sequential``), a JSON object ``{"module": device}``
    (devices: ``0``, ``"cuda:1"``, ``"cpu"``, ``"disk"``) or the path of a JSON file holding one."""
    import json

    text = value.strip()
    if text in DEVICE_MAPS:
        return text
    if not text.startswith("{"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise UsageError(f"--device-map takes {', '.join(DEVICE_MAPS)}, a JSON object or a JSON file "
                             f"(got {value!r}: no such file)")
        text = path.read_text()
    try:
        dm = json.loads(text)
    except ValueError as e:
        raise UsageError(f"--device-map: not JSON ({e})") from None
    if not isinstance(dm, dict) or not dm or not all(isinstance(v, (int, str)) for v in dm.values()):
        raise UsageError("--device-map must map module names to devices, e.g. {\"gpt_neox.layers.0\": 0, "
                         "\"lm_head\": \"cpu\"}")
    return dm


def _offload_folder(kwargs: dict) -> str | None:
    """A fresh folder for the weights a device map sends to ``"disk"`` (accelerate needs one),
    unless the caller gave ``offload_folder``; one per load, so that revisions and workers
    never share it."""
    dm = kwargs.get("device_map")
    if not isinstance(dm, dict) or "disk" not in dm.values() or kwargs.get("offload_folder"):
        return None
    import tempfile

    kwargs["offload_folder"] = tempfile.mkdtemp(prefix="reason-interp-offload-")
    return kwargs["offload_folder"]


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set: the Hub client reads only its cache, at once."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


@functools.lru_cache(maxsize=None)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub's host takes a TCP connection within ``timeout`` seconds (once per
    process). Offline, the Hub client would otherwise retry each file for ~30 s before failing."""
    import socket
    from urllib.parse import urlsplit

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # behind a proxy a direct connection says nothing: let the Hub client try
    url = urlsplit(_hub_endpoint())
    try:
        socket.create_connection((url.hostname or "", url.port or (80 if url.scheme == "http" else 443)),
                                 timeout=timeout).close()
        return True
    except OSError:
        return False


def _cached_snapshot(name: str, revision: str | None) -> str | None:
    """The local Hub cache's snapshot directory of ``name`` at ``revision``, or None."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name, revision=revision, local_files_only=True)
    except Exception:  # not cached (LocalEntryNotFoundError), or not a valid repo id
        return None


def _with_adapter(source: str, adapter: str, tokenizer: Any, dtype: torch.dtype, attn_implementation: str,
                  load_kwargs: dict[str, Any]) -> Any:
    """The base model with the PEFT ``adapter`` merged into its weights, as a TransformersModel."""
    try:
        import peft
    except ImportError:
        raise UsageError("adapters need the peft package: pip install 'nnsight-reasoning[peft]'") from None
    from nnsight.modeling.transformers import TransformersModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, attn_implementation=attn_implementation,
                                                **load_kwargs)
    try:
        merged = peft.PeftModel.from_pretrained(base, adapter).merge_and_unload()
    except Exception as e:  # a missing directory or id, an adapter for other modules or shapes
        first = _first_line(e)
        raise UsageError(f"could not apply adapter {adapter!r} to {source}: {first[:200]}") from None
    tok = AutoTokenizer.from_pretrained(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer
    return TransformersModel(merged.eval(), tokenizer=tok)


def _first_line(e: Exception) -> str:
    """The first line of an exception's message (library errors run to many lines), or its type."""
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def is_loaded_by_name(model: Any) -> bool:
    """Whether ``model`` came from :func:`load_model` (so loading its name again gives it back)."""
    return model in _INFO


def relabel(model: Any, name: str) -> Any:
    """``model`` with the provenance name ``name`` (a local directory loaded by its absolute
    path on a worker keeps the path the user gave); returns the model."""
    _INFO[model] = replace(model_info(model), name=str(name))
    return model


def model_info(model: Any) -> ModelInfo:
    """Provenance of a model from :func:`load_model`, or a best guess for one built by hand."""
    info = _INFO.get(model)
    if info is not None:
        return info
    repo = str(getattr(model, "repo_id", "") or getattr(model.config, "_name_or_path", "unknown"))
    return ModelInfo(repo, repo if Path(repo).exists() else "", "")
