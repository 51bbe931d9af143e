"""A model placed by accelerate (``--device-map``, ``load_model(device_map=...)``): every
experiment gives the numbers of the model in one piece. On CPU the map sends two layers to
"disk", so accelerate's offloading hooks run for real: their weights sit on the meta device
between forward passes and are loaded for each, and the experiments that read weights
(OV circuits, head and neuron logit effects, EAP graphs) onload them first."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import nnsight_reasoning as nr
from nnsight_reasoning.backend import graph

from .clirun import in_process
from .test_harness import COMMANDS, assert_same_values

# the embedded model's modules: layers 2 and 3 offloaded to disk, the rest on the CPU
MAP = {"gpt_neox.embed_in": "cpu", "gpt_neox.rotary_emb": "cpu", "gpt_neox.layers.0": "cpu",
       "gpt_neox.layers.1": "cpu", "gpt_neox.layers.2": "disk", "gpt_neox.layers.3": "disk",
       "gpt_neox.final_layer_norm": "cpu", "lm_head": "cpu"}
# the commands that read weights besides the harness table's
WEIGHT_READERS = {"successor_heads": ["successor-heads"], "copy_suppression": ["copy-suppression"],
                  "ioi_components": ["ioi-components", "--n-prompts", "4"],
                  "greater_than_components": ["greater-than-components", "--n-prompts", "4"],
                  "backup_heads": ["backup-heads", "--n-prompts", "4", "--heads", "a1.0,a1.3"],
                  "path_patching": ["path-patching", "--receivers", "a3.0", "--n-prompts", "4"]}


@pytest.fixture(scope="module")
def placed():
    return nr.load_model(device_map=MAP)


def test_offloaded_layers_give_the_same_patching_and_weight_reads(placed, embedded_model, small_pairs):
    a = nr.patch(embedded_model, small_pairs, sites=["mlp", "attn", "head"], positions="all", progress=False)
    b = nr.patch(placed, small_pairs, sites=["mlp", "attn", "head"], positions="all", progress=False)
    assert_same_values(a, b)
    layer = nr.nnsight_shim.torch_module(placed).gpt_neox.layers[3]
    assert layer.attention.dense.weight.device.type == "meta"  # really offloaded
    # reads o_proj weights inside a trace and the unembedding outside it
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    np.testing.assert_array_equal(graph.head_logit_effects(placed, ids, ids).numpy(),
                                  graph.head_logit_effects(embedded_model, ids, ids).numpy())
    np.testing.assert_array_equal(graph.ov_logits(placed, [5, 6, 7]).numpy(),
                                  graph.ov_logits(embedded_model, [5, 6, 7]).numpy())
    assert layer.attention.dense.weight.device.type == "meta"  # offloaded again afterwards


def test_cli_device_map_file_travels_through_a_sweep(tmp_path):
    (tmp_path / "map.json").write_text(json.dumps(MAP))
    args = ["heads", "--n-sequences", "4", "--seq-len", "6", "--revisions", "step0,main", "--no-progress"]
    a = in_process(args + ["--out", str(tmp_path / "a.nc")])
    b = in_process(args + ["--out", str(tmp_path / "b.nc"), "--device-map", str(tmp_path / "map.json")])
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    da, db = nr.load_result(tmp_path / "a.nc"), nr.load_result(tmp_path / "b.nc")
    assert_same_values(da, db)
    assert list(db.checkpoint.values) == ["step0", "main"]
    assert json.loads(db.attrs["device_map"]) == MAP and "device_map" not in da.attrs  # every revision so placed


@pytest.mark.slow
@pytest.mark.parametrize("name", [*COMMANDS, *WEIGHT_READERS])
def test_every_experiment_on_a_placed_model_equals_the_whole_model(name, tmp_path):
    (tmp_path / "map.json").write_text(json.dumps(MAP))
    args = {**COMMANDS, **WEIGHT_READERS}[name] + ["--no-progress"]
    a = in_process(args + ["--out", str(tmp_path / "whole.nc")])
    b = in_process(args + ["--out", str(tmp_path / "placed.nc"), "--device-map", str(tmp_path / "map.json")])
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    placed = nr.load_result(tmp_path / "placed.nc")
    assert json.loads(placed.attrs["device_map"]) == MAP  # the map was used, not dropped
    assert_same_values(nr.load_result(tmp_path / "whole.nc"), placed)


def gpu_map() -> dict:
    """The embedded model across the GPUs there are: layers 0–1 on GPU 0, 2–3 on GPU 1 (with two
    or more), else on GPU 0 with layers 2–3 offloaded to the CPU (executed on GPU 0)."""
    second = 1 if torch.cuda.device_count() > 1 else "cpu"
    return {"gpt_neox.embed_in": 0, "gpt_neox.rotary_emb": 0, "gpt_neox.layers.0": 0, "gpt_neox.layers.1": 0,
            "gpt_neox.layers.2": second, "gpt_neox.layers.3": second, "gpt_neox.final_layer_norm": second,
            "lm_head": second}


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (run on a GPU machine: pytest -m slow -k gpu)")
@pytest.mark.parametrize("name", [*COMMANDS, *WEIGHT_READERS])
def test_every_experiment_on_gpus_matches_the_cpu(name, tmp_path):
    # the toolkit's own tensors (answer ids, IG alphas, ablation values, edge masks) meet
    # activations on the GPU, and per-layer values come from two devices: all must be moved
    (tmp_path / "map.json").write_text(json.dumps(gpu_map()))
    args = {**COMMANDS, **WEIGHT_READERS}[name] + ["--no-progress"]
    a = in_process(args + ["--out", str(tmp_path / "cpu.nc")])
    b = in_process(args + ["--out", str(tmp_path / "gpu.nc"), "--device-map", str(tmp_path / "map.json")])
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    on_cpu, on_gpu = nr.load_result(tmp_path / "cpu.nc"), nr.load_result(tmp_path / "gpu.nc")
    assert json.loads(on_gpu.attrs["device_map"]) == json.loads(json.dumps(gpu_map()))
    # GPU kernels round differently: float32 arithmetic, so the float variables (logits,
    # probabilities, effects) to 1e-4, not bit for bit; integer ones (ranks, top-k ids) can
    # change at near-ties and are left out
    floats = [v for v in on_cpu.data_vars if on_cpu[v].dtype.kind == "f"]
    assert floats, name
    assert_same_values(on_cpu[floats], on_gpu[floats], tol=1e-4)
