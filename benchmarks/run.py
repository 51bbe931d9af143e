"""The performance suite: one command, one table, one JSON file.

    pip install -e ".[bench]"      # adds TransformerLens 3.9.0, the last release with HookedTransformer
    python benchmarks/run.py [--repeats 3] [--json benchmarks/results.json] [--skip remote,checkpoints,cluster]

Sections, each measured side by side in this one process (memory in child processes):

1. sweep: full activation-patching sweep (sites ``mlp`` and ``resid``, every layer × every
   position, 64 arithmetic pairs, metric stolfo_ie) on (a) the embedded model and (b) a
   randomly initialised GPT-NeoX with Pythia-160m's dimensions, four ways:
   the toolkit (``nr.patch``); a naive nnsight loop (one trace per site, batched over the
   prompts, with the same forward options as the toolkit); TransformerLens
   ``patching.get_act_patch_resid_pre`` / ``get_act_patch_mlp_out`` on a ``HookedTransformer``
   built from the same config and weights; and the compute limit, a bare batched
   ``torch`` forward (no nnsight, no interventions) over as many token rows, in the same
   batch shapes, as the toolkit's sweep. All four must agree; the script checks it.
2. attribution vs exact: the same sweep (metric logit_diff) by exact activation patching, by
   attribution patching (one forward + backward) and by attribution with integrated
   gradients (5 steps): seconds, speed-up, and the Pearson r of each estimate against exact
   per site (meaningful on the trained embedded model; the 160m shape is random weights).
3. edges: EAP and EAP-IG (5 steps) edge scores over the whole component graph against exact
   patching of every edge alone (``nr.edge_patching``), on the embedded model only
   (exact patching of the 160m shape's 11,467 edges is out of reach on a CPU): seconds,
   speed-up and Pearson r.
4. memory: peak RSS of the sweep at 64, 256 and 1024 prompts (embedded model, fresh process each).
5. remote: requests and bytes of a remote sweep (loopback NDIF server) vs one request per site.
6. checkpoints: seconds per revision of a checkpoint sweep, load vs compute.
7. engine: patching engine v2 against v1, a plain forward and the minimal-work reference
   (``benchmarks/engine.py``; its ``--skip embedded,160m`` choices follow this script's).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # TransformerLens draws one bar per patching sweep
import warnings  # noqa: E402

warnings.filterwarnings("ignore", message="HookedTransformer is deprecated")  # 3.9 warns about 4.0

import numpy as np  # noqa: E402
import torch  # noqa: E402

import nnsight_reasoning as nr  # noqa: E402
from nnsight_reasoning.experiments.patch import Grid, plan_passes  # noqa: E402
from nnsight_reasoning.sites import architecture, dims, resolve  # noqa: E402
from nnsight_reasoning.tasks.base import group_by_length, single_token_id  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))  # the sibling modules, also when imported from elsewhere
from engine import timed  # noqa: E402

SITES = ["mlp", "resid"]
BATCH = 512


def make_pairs(model, n: int):
    # one template: every prompt has the same length, so the TransformerLens sweep (which
    # cannot mix lengths) sees the same batches as the others
    return nr.tasks.arithmetic(n_prompts=n, seed=0, templates=["{expr} ="], tokenizer=model.tokenizer)


def encode(model, pairs):
    tok = model.tokenizer
    base = [tok(p.base)["input_ids"] for p in pairs]
    src = [tok(p.source)["input_ids"] for p in pairs]
    ans = [[single_token_id(tok, a) for a in (p.base_answer, p.source_answer)] for p in pairs]
    return base, src, ans


def answer_probs(logits: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """(rows, 2) probabilities of (base answer, source answer) from last-position logits."""
    return logits.double().log_softmax(-1).gather(1, answers).exp()


def ie(p_clean: torch.Tensor, p_patched: torch.Tensor) -> np.ndarray:
    """The toolkit's stolfo_ie, per row, from :func:`answer_probs` of the clean and patched runs."""
    return nr.metrics.stolfo_ie(p_clean[:, 0], p_clean[:, 1], p_patched[:, 0], p_patched[:, 1])


# --------------------------------------------------------------------------- the four methods
def toolkit(model, pairs):
    return nr.patch(model, pairs, sites=SITES, positions="all", batch_size=BATCH, progress=False)


def naive_loop(model, pairs):
    """The one-off-script way: cache the source run, then one trace per (site, layer, position)."""
    arch = architecture(model)
    layers = resolve(model, arch.layers)
    n_layers = dims(model)["n_layers"]
    base, src, ans = encode(model, pairs)
    t_max = max(map(len, base))
    out = {s: np.full((len(pairs), n_layers, t_max), np.nan) for s in SITES}
    opts = {"logits_to_keep": 1, "use_cache": False}  # what the toolkit uses: compare designs, not options
    traces = 0
    for idx in group_by_length([len(b) for b in base]):
        b, s = torch.tensor([base[i] for i in idx]), torch.tensor([src[i] for i in idx])
        a = torch.tensor([ans[i] for i in idx])
        acts = {}
        with torch.no_grad(), model.trace(s, **opts):
            for layer in range(n_layers):
                acts[("mlp", layer)] = resolve(layers[layer], arch.mlp).output.save()
                acts[("resid", layer)] = layers[layer].output.save()
        with torch.no_grad(), model.trace(b, **opts):
            clean = model.output.logits[:, -1].save()
        traces += 2
        p_clean = answer_probs(clean, a)
        for site in SITES:
            for layer in range(n_layers):
                for pos in range(b.shape[1]):
                    with torch.no_grad(), model.trace(b, **opts):
                        x = resolve(layers[layer], arch.mlp).output if site == "mlp" else layers[layer].output
                        x[:, pos] = acts[(site, layer)][:, pos]
                        logits = model.output.logits[:, -1].save()
                    traces += 1
                    out[site][idx, layer, pos] = ie(p_clean, answer_probs(logits, a))
    return out, traces


def hooked_transformer(model):
    """A TransformerLens HookedTransformer with the same config and weights as a GPT-NeoX model."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.neox import convert_neox_weights

    c = model.config
    rope = c.rope_parameters
    d_head = c.hidden_size // c.num_attention_heads
    cfg = HookedTransformerConfig(
        n_layers=c.num_hidden_layers, d_model=c.hidden_size, d_head=d_head, n_heads=c.num_attention_heads,
        d_mlp=c.intermediate_size, d_vocab=c.vocab_size, n_ctx=c.max_position_embeddings, act_fn="gelu",
        normalization_type="LN", eps=c.layer_norm_eps, positional_embedding_type="rotary",
        rotary_dim=int(d_head * rope.get("partial_rotary_factor", 1.0)), rotary_base=rope["rope_theta"],
        rotary_adjacent_pairs=False, parallel_attn_mlp=c.use_parallel_residual,
        original_architecture="GPTNeoXForCausalLM", default_prepend_bos=False, dtype=torch.float32)
    tl = HookedTransformer(cfg)
    tl.load_and_process_state_dict(convert_neox_weights(model._module, cfg), fold_ln=False,
                                   center_writing_weights=False, center_unembed=False,
                                   fold_value_biases=False, refactor_factored_attn_matrices=False)
    return tl.eval()


def tl_sweep(tl, model, pairs):
    """TransformerLens's own patching functions; their metric is one scalar per patch, so
    this gives the prompt-mean per length group: {site: {group: (layer, position)}}, and
    the number of forward passes."""
    from transformer_lens import patching as tlp

    base, src, ans = encode(model, pairs)
    out = {s: {} for s in SITES}
    passes = 0
    with torch.no_grad():
        for g, idx in enumerate(group_by_length([len(b) for b in base])):
            b, s = torch.tensor([base[i] for i in idx]), torch.tensor([src[i] for i in idx])
            a = torch.tensor([ans[i] for i in idx])
            _, cache = tl.run_with_cache(s, names_filter=lambda n: n.endswith(("resid_pre", "mlp_out")))
            p_clean = answer_probs(tl(b)[:, -1], a)

            def metric(logits, p_clean=p_clean, a=a):
                return torch.tensor(ie(p_clean, answer_probs(logits[:, -1], a)).mean())

            out["resid"][g] = tlp.get_act_patch_resid_pre(tl, b, cache, metric).numpy()
            out["mlp"][g] = tlp.get_act_patch_mlp_out(tl, b, cache, metric).numpy()
            passes += 2 + len(SITES) * tl.cfg.n_layers * b.shape[1]  # source cache, clean, one per patch
    return out, passes


def pass_shapes(model, lengths):
    """(rows, tokens) of each forward pass of the toolkit's sweep, and its layer-rows."""
    d = dims(model)
    shapes, layer_rows = [], 0
    grid = Grid(list(SITES), list(range(d["n_layers"])), "all", d["n_heads"])
    for job in plan_passes(lengths, grid, BATCH):
        idx, units = job.pairs, job.units
        shapes.append((len(idx) * (len(units) + 2), lengths[idx[0]]))
        # inputs run every layer; a copy joins at its layer (mlp) or after it (resid)
        layer_rows += len(idx) * (2 * d["n_layers"] + sum(d["n_layers"] - u.li - (u.site == "resid")
                                                         for u in units))
    return shapes, layer_rows


def limit_batches(base, shapes) -> list[torch.Tensor]:
    """Token batches of the toolkit's pass shapes, built outside the timed forward."""
    by_len = {len(b): b for b in base}
    return [torch.tensor([by_len[t]] * rows) for rows, t in shapes]


def bare_forward(model, batches):
    """The compute limit: plain batched forwards, no nnsight, no interventions."""
    with torch.inference_mode():
        for ids in batches:
            model._module(ids, logits_to_keep=1, use_cache=False)


# --------------------------------------------------------------------------- sections
def sweep_section(name: str, model, n_prompts: int, repeats: int, with_tl: bool) -> dict:
    pairs = make_pairs(model, n_prompts)
    base = encode(model, pairs)[0]
    groups = group_by_length([len(b) for b in base])
    shapes, layer_rows = pass_shapes(model, [len(b) for b in base])
    batches = limit_batches(base, shapes)
    n_layers = dims(model)["n_layers"]
    fns = {"toolkit": lambda: toolkit(model, pairs), "naive_nnsight": lambda: naive_loop(model, pairs),
           "compute_limit": lambda: bare_forward(model, batches)}
    tl = hooked_transformer(model) if with_tl else None
    if tl is not None:
        fns["transformer_lens"] = lambda: tl_sweep(tl, model, pairs)
    toolkit(model, make_pairs(model, 2))  # warm-up: first-trace costs are not the sweep's
    results, times = timed(fns, repeats)

    ds = results["toolkit"]
    naive, traces = results["naive_nnsight"]
    for s in SITES:  # all methods must give the same numbers
        np.testing.assert_allclose(ds[s].values, naive[s], rtol=1e-3, atol=1e-5, err_msg=f"naive {s}")
    if tl is not None:
        tl_out, tl_passes = results["transformer_lens"]
        for g, idx in enumerate(groups):
            mean = {s: ds[s].values[idx].mean(0) for s in SITES}
            np.testing.assert_allclose(tl_out["mlp"][g], mean["mlp"], rtol=1e-3, atol=1e-5)
            # our resid after layer l is TransformerLens's resid_pre of layer l + 1
            np.testing.assert_allclose(tl_out["resid"][g][1:], mean["resid"][:-1],
                                       rtol=1e-3, atol=1e-5)
    rows = sum(r for r, _ in shapes)
    t_tool = times["toolkit"]["median_s"]
    out = {"model": name, "n_prompts": n_prompts, "sites": SITES, "positions": "all",
           "n_layers": n_layers, "tokens_per_prompt": shapes[0][1], "patched_rows": rows,
           "forward_passes": {"toolkit": int(ds.attrs["n_forward_passes"]), "naive_nnsight": traces,
                              "compute_limit": len(shapes)},
           "layer_rows_vs_limit": layer_rows / (rows * n_layers), "seconds": times, "agree": True,
           "speedup_vs_naive": times["naive_nnsight"]["median_s"] / t_tool,
           "throughput_vs_limit": times["compute_limit"]["median_s"] / t_tool}
    if tl is not None:
        out["forward_passes"]["transformer_lens"] = tl_passes
        out["speedup_vs_transformer_lens"] = times["transformer_lens"]["median_s"] / t_tool
    return out


def attribution_section(name: str, model, n_prompts: int, repeats: int) -> dict:
    pairs = make_pairs(model, n_prompts)
    kw = dict(sites=SITES, positions="all", metric="logit_diff", progress=False)
    fns = {"exact": lambda: nr.patch(model, pairs, **kw),
           "attribution": lambda: nr.patch(model, pairs, method="attribution", **kw),
           "attribution_ig5": lambda: nr.patch(model, pairs, method="attribution", ig_steps=5, **kw)}
    nr.patch(model, make_pairs(model, 2), method="attribution", **kw)  # warm-up
    results, times = timed(fns, repeats)
    exact = results["exact"]
    pearson = {k: {s: float(np.corrcoef(exact[s].values.ravel(), results[k][s].values.ravel())[0, 1]) for s in SITES}
               for k in ("attribution", "attribution_ig5")}
    return {"model": name, "n_prompts": n_prompts, "sites": SITES, "metric": "logit_diff", "seconds": times,
            "speedup_vs_exact": {k: times["exact"]["median_s"] / times[k]["median_s"] for k in pearson},
            "pearson_r_vs_exact": pearson,
            "forward_passes": {k: int(v.attrs["n_forward_passes"]) for k, v in results.items()}}


def edges_section(name: str, model, n_prompts: int, repeats: int) -> dict:
    """EAP and EAP-IG edge scores against exact patching of every edge alone (one row per edge
    and pair: the quantity EAP estimates), on the whole component graph."""
    pairs = make_pairs(model, n_prompts)
    fns = {"edge_patching": lambda: nr.edge_patching(model, pairs, progress=False),
           "eap": lambda: nr.circuit(model, pairs, ig_steps=1, sizes=(), progress=False),
           "eap_ig5": lambda: nr.circuit(model, pairs, ig_steps=5, sizes=(), progress=False)}
    nr.circuit(model, make_pairs(model, 2), ig_steps=1, sizes=(), progress=False)  # warm-up
    results, times = timed(fns, repeats)
    exact = results["edge_patching"]["score"].values
    ok = np.isfinite(exact)
    pearson = {k: float(np.corrcoef(exact[ok], results[k]["score"].values[ok])[0, 1]) for k in ("eap", "eap_ig5")}
    return {"model": name, "n_prompts": n_prompts, "n_edges": int(ok.sum()), "seconds": times,
            "speedup_vs_exact": {k: times["edge_patching"]["median_s"] / times[k]["median_s"] for k in pearson},
            "pearson_r_vs_exact": pearson,
            "forward_passes": {k: int(v.attrs["n_forward_passes"]) for k, v in results.items()}}


def report_edges(a: dict) -> None:
    print(f"\n[edge attribution vs exact edge patching] {a['model']}, {a['n_prompts']} pairs, {a['n_edges']} edges")
    print(f"  {'method':<18}{'median s':>10}{'passes':>8}{'faster':>9}  Pearson r vs exact")
    for k, t in a["seconds"].items():
        r = a["pearson_r_vs_exact"].get(k)
        speed = f"{a['speedup_vs_exact'][k]:.1f}x" if k in a["speedup_vs_exact"] else ""
        print(f"  {k:<18}{t['median_s']:>10.2f}{a['forward_passes'][k]:>8}{speed:>9}  {'' if r is None else f'{r:.3f}'}")


def report_attribution(a: dict) -> None:
    print(f"\n[attribution vs exact] {a['model']}, {a['n_prompts']} pairs, {'+'.join(a['sites'])}, all positions, "
          f"logit_diff")
    print(f"  {'method':<18}{'median s':>10}{'passes':>8}{'faster':>9}  Pearson r vs exact")
    for k, t in a["seconds"].items():
        r = a["pearson_r_vs_exact"].get(k)
        rs = "  ".join(f"{s} {v:.3f}" for s, v in r.items()) if r else ""
        speed = f"{a['speedup_vs_exact'][k]:.1f}x" if k in a["speedup_vs_exact"] else ""
        print(f"  {k:<18}{t['median_s']:>10.2f}{a['forward_passes'][k]:>8}{speed:>9}  {rs}")


def memory_child(n_prompts: int) -> None:
    """In a fresh process: peak RSS after loading, and after a sweep written as the CLI does."""
    def peak_mb():
        # VmHWM belongs to this process image; ru_maxrss would also count the parent's RSS at fork
        status = Path("/proc/self/status")
        if status.is_file():
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 2**20)

    model = nr.load_model()
    model.dispatch()
    pairs = make_pairs(model, n_prompts)
    loaded = peak_mb()
    work = Path(tempfile.mkdtemp(prefix="mem-bench-"))
    try:
        ds = nr.patch(model, pairs, sites=SITES, positions="all", batch_size=BATCH, progress=False,
                      resume_dir=work / "x.nc.parts")
        nr.save_result(ds, work / "x.nc")
        size = (work / "x.nc").stat().st_size
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"n_prompts": n_prompts, "loaded_MB": loaded, "peak_MB": peak_mb(), "result_kB": size / 1e3}))


def memory_section(sizes: list[int]) -> dict:
    rows = []
    for n in sizes:
        out = subprocess.run([sys.executable, __file__, "--memory-child", str(n)], capture_output=True,
                             text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {"model": "embedded", "runs": rows, "peak_ratio_max_vs_min": rows[-1]["peak_MB"] / rows[0]["peak_MB"]}


def machine() -> dict:
    return {"date": datetime.date.today().isoformat(), "platform": platform.platform(),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "device": "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}


def report_sweep(s: dict) -> None:
    print(f"\n[sweep] {s['model']}: {s['n_prompts']} pairs × {{mlp, resid}} × {s['n_layers']} layers × "
          f"{s['tokens_per_prompt']} positions = {s['patched_rows']} patched rows")
    print(f"  {'method':<20}{'median s':>10}{'min s':>10}{'traces':>9}{'toolkit faster':>16}")
    for k, t in s["seconds"].items():
        ratio = t["median_s"] / s["seconds"]["toolkit"]["median_s"]
        print(f"  {k:<20}{t['median_s']:>10.2f}{t['min_s']:>10.2f}{s['forward_passes'][k]:>9}{ratio:>15.1f}x")
    print(f"  toolkit throughput = {100 * s['throughput_vs_limit']:.0f}% of the compute limit "
          f"(it computes {100 * s['layer_rows_vs_limit']:.0f}% of the limit's layer-rows); all methods agree")


def report_memory(mem: dict) -> None:
    print("\n[memory] peak RSS of a sweep (embedded, mlp+resid, all positions, parts on disk):")
    for r in mem["runs"]:
        print(f"  {r['n_prompts']:>5} prompts: peak {r['peak_MB']:.0f} MB (after load {r['loaded_MB']:.0f} MB), "
              f"result {r['result_kB']:.0f} kB")
    print(f"  peak at {mem['runs'][-1]['n_prompts']} / at {mem['runs'][0]['n_prompts']}: "
          f"{mem['peak_ratio_max_vs_min']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-prompts", type=int, default=64)
    ap.add_argument("--json", type=Path, default=Path(__file__).with_name("results.json"))
    ap.add_argument("--skip", default="", help="comma list of: embedded, 160m, transformer_lens, engine, memory, "
                                               "remote, checkpoints, cluster")
    ap.add_argument("--memory-sizes", default="64,256,1024", help="prompt counts of the memory section")
    ap.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # sections take minutes: show each when done
    if args.memory_child:
        return memory_child(args.memory_child)
    skip = set(filter(None, args.skip.split(",")))
    with_tl = "transformer_lens" not in skip
    if with_tl:
        try:
            import transformer_lens  # noqa: F401
        except ImportError:
            sys.exit('TransformerLens is missing: pip install -e ".[bench]" (or --skip transformer_lens)')
    res: dict = {"machine": machine(), "sweep": []}
    m = res["machine"]
    print(f"machine: {m['cores']} cores ({m['torch_threads']} torch threads), {m['device']}, torch {m['torch']}")
    if "embedded" not in skip:
        model = nr.load_model()
        model.dispatch()
        res["sweep"].append(sweep_section("embedded", model, args.n_prompts, args.repeats, with_tl))
        report_sweep(res["sweep"][-1])
        res.setdefault("attribution", []).append(attribution_section("embedded", model, args.n_prompts, args.repeats))
        report_attribution(res["attribution"][-1])
        res["edges"] = edges_section("embedded", model, args.n_prompts, args.repeats)
        report_edges(res["edges"])
    if "160m" not in skip:
        import checkpoint_sweep

        work = Path(tempfile.mkdtemp(prefix="bench-160m-"))
        try:
            checkpoint_sweep.pythia_160m_like(work, ["main"])
            model = nr.load_model(work / "main")
            model.dispatch()
            res["sweep"].append(sweep_section("pythia-160m-shape (random)", model, args.n_prompts,
                                              args.repeats, with_tl))
            report_sweep(res["sweep"][-1])
            res.setdefault("attribution", []).append(attribution_section("pythia-160m-shape (random)", model,
                                                                         args.n_prompts, args.repeats))
            report_attribution(res["attribution"][-1])
            del model
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if "engine" not in skip:
        import engine

        res["engine"] = engine.measure_all(args.n_prompts, args.repeats, skip)
        engine.report(res["engine"])
    if "memory" not in skip:
        res["memory"] = memory_section([int(n) for n in args.memory_sizes.split(",")])
        report_memory(res["memory"])
    if "remote" not in skip:
        import remote_requests

        res["remote"] = remote_requests.measure(args.n_prompts)
        remote_requests.report(res["remote"])
    if "checkpoints" not in skip:
        import checkpoint_sweep

        res["checkpoints"] = checkpoint_sweep.measure_all(args.n_prompts)
        checkpoint_sweep.report(res["checkpoints"])
    if "cluster" not in skip:
        import cluster_sweep

        res["cluster"] = cluster_sweep.measure(args.n_prompts)
        cluster_sweep.report(res["cluster"])
    args.json.write_text(json.dumps(res, indent=1, default=str))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
