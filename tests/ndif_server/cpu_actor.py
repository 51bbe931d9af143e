"""A model actor for NDIF on a machine with no GPU (imported by Ray workers of the test stack).

ndif 0.1.2's stock actor moves weights to its assigned CUDA device and synchronises CUDA on
cleanup. This one loads the checkpoint on the CPU, drops the fake GPU allocation the
controller hands it (the controller only places models on nodes that report a GPU, so the
test stack's Ray node advertises one), and makes no CUDA call.
"""
import gc

import ray
from ndif.services.ray.deployments.modeling.base import BaseModelDeployment
from nnsight.modeling.huggingface import HuggingFaceModel


class CPUModelDeployment(BaseModelDeployment):
    CACHEABLE = False  # parking a model moves it GPU -> CPU; nothing to move here

    def __init__(self, *args, gpu_mem_bytes_by_id=None, **kwargs):
        super().__init__(*args, gpu_mem_bytes_by_id={}, **kwargs)

    def load_from_disk(self) -> HuggingFaceModel:
        # Eager attention, as nr.load_model uses locally: the same experiment must give the
        # same numbers. (Stock NDIF loads with transformers' default, usually SDPA, whose
        # logits differ from eager by ~1e-5; see docs/remote.md.)
        kwargs = {"attn_implementation": "eager", **self.kwargs}
        model = HuggingFaceModel.from_model_key(self.model_key, dispatch=True, dtype=self.dtype_name,
                                                device="cpu", **kwargs)
        model._module.requires_grad_(False)
        return model

    def cleanup(self) -> None:
        self.kill_switch.clear()
        self.kill_reason = None
        self.execution_ident = None
        self.model.interleaver.cancel()
        gc.collect()

    async def to_cache(self) -> None:
        self.cached = True

    def from_cache(self, gpu_mem_bytes_by_id) -> None:
        self.cached = False


@ray.remote(num_cpus=1, max_restarts=-1)
class CPUModelActor(CPUModelDeployment):
    pass
