"""Every use of nnsight's private API, in one place, pinned to the nnsight version it was
written against.

The toolkit uses nnsight's public API (``trace``, ``.input``/``.output``, ``save``,
``backward``) everywhere else. Three things nnsight 0.8.1 offers no public hook for live here:

- counting a remote job's bytes and polls (``RemoteBackend._post``, ``poll``, ``finalize``),
  and switching off its own status display (``RemoteBackend.display``);
- naming a model loaded from a local directory by its path for NDIF, without a Hub lookup
  (``nnsight.modeling.huggingface._ID_CACHE``);
- the wrapped torch module of an Envoy (``Envoy._module``), e.g. to freeze weights outside a
  trace: :func:`torch_module` is the one accessor (architecture facts such as a transposed
  weight layout come from ``sites.ARCHITECTURES``, never from module classes).

:func:`check` verifies that these still exist; ``tests/test_nnsight_shim.py`` runs it, so
another nnsight version fails loudly there rather than subtly in a run.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

T = TypeVar("T")

NNSIGHT_VERSION = "0.8.1"  # pyproject pins it; a new version means re-reading this file


def check() -> list[str]:
    """The private names this module relies on that the installed nnsight lacks ([] = all there)."""
    import nnsight
    import nnsight.modeling.huggingface as hf
    from nnsight.intervention.backends.remote import RemoteBackend
    from nnsight.intervention.envoy import Envoy

    missing = []
    if nnsight.__version__ != NNSIGHT_VERSION:
        missing.append(f"nnsight {nnsight.__version__} (written for {NNSIGHT_VERSION})")
    for name in ("_post", "poll", "finalize", "__init__"):
        if not callable(getattr(RemoteBackend, name, None)):
            missing.append(f"RemoteBackend.{name}")
    if not isinstance(getattr(hf, "_ID_CACHE", None), dict):
        missing.append("nnsight.modeling.huggingface._ID_CACHE")
    if "_module" not in getattr(Envoy.__init__, "__code__", type("", (), {"co_names": ()})).co_names:
        missing.append("Envoy._module")
    return missing


def torch_module(envoy: Any) -> Any:
    """The torch module an nnsight Envoy wraps (a plain module is returned as it is)."""
    return getattr(envoy, "_module", envoy)


def name_local_model(repo: str, model_id: str | None = None) -> None:
    """Let nnsight name a model loaded from the local directory ``repo`` by ``model_id`` (a
    Hub cache's snapshot: its Hub id), or by that path (what a self-hosted NDIF serving the same
    path expects), instead of asking the Hub for its id."""
    import nnsight.modeling.huggingface as hf

    hf._ID_CACHE.setdefault(repo, model_id or repo)


@functools.cache
def _counting_backend_class() -> type:
    from nnsight.intervention.backends.remote import RemoteBackend

    class CountingBackend(RemoteBackend):
        """nnsight's remote backend reporting each job's bytes and polls to ``count``; its own
        status display off (the toolkit shows one progress bar per sweep instead)."""

        def __init__(self, *args: Any, count: Callable[[str, int], None], **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.count = count
            self.display.enabled = False

        def _post(self, request, blob):
            response = super()._post(request, blob)
            self.count("jobs", 1)  # accepted ones only: a refused connection is a retry, not a job
            self.count("bytes_sent", len(blob))
            return response

        def poll(self, tracer=None):
            self.count("polls", 1)
            return super().poll(tracer)

        def finalize(self, content):
            self.count("bytes_received", len(content))
            return super().finalize(content)

    return CountingBackend


def counting_backend(*args: Any, count: Callable[[str, int], None], **kwargs: Any) -> Any:
    """A non-blocking nnsight ``RemoteBackend`` (same arguments) that calls ``count(what, n)``
    for every job posted (``jobs``, ``bytes_sent``), poll (``polls``) and result
    (``bytes_received``)."""
    return _counting_backend_class()(*args, count=count, **kwargs)


@contextmanager
def onloaded(model: Any, remote: bool | str = False) -> Iterator[None]:
    """Inside, the weights of modules that accelerate offloads (a device map with ``"cpu"`` or
    ``"disk"`` entries keeps them on the meta device between forward passes) are on their
    execution devices, and forward passes leave them there; afterwards they are offloaded
    again. For code that reads weights (``o_proj.weight``, the unembedding) rather than only
    activations; a model without offloaded modules is untouched."""
    try:
        from accelerate.utils import has_offloaded_params
    except ImportError:  # without accelerate nothing is offloaded
        yield
        return
    from .remote import is_ndif

    if not is_ndif(remote) and not getattr(model, "dispatched", True):
        model.dispatch()  # weights load (and offloading hooks attach) at dispatch
    held = []
    try:
        for module in torch_module(model).modules():
            if has_offloaded_params(module):
                hook = module._hf_hook
                hook.pre_forward(module)  # the weights onto the execution device
                hook.offload = False  # forward passes inside leave them there
                held.append((module, hook))
        yield
    finally:
        for module, hook in reversed(held):
            hook.offload = True
            hook.post_forward(module, None)  # back to the meta device


def reads_weights(fn: Callable[..., T]) -> Callable[..., T]:
    """A backend function ``fn(model, ..., remote=...)`` that reads weights: run in :func:`onloaded`."""
    @functools.wraps(fn)
    def wrapper(model: Any, *args: Any, **kwargs: Any) -> T:
        with onloaded(model, kwargs.get("remote", False)):
            return fn(model, *args, **kwargs)

    return wrapper
