"""Print the numbers the docs cite that no figure shows, from the result files of
scripts/build_figures.sh (its section "numbers the docs cite (no figure)", plus circuit.nc and
path_patching.nc of the figures above it).

    python scripts/docs_numbers.py RESULTS_DIR        # build_figures.sh tees this to RESULTS_DIR/docs_numbers.txt
    python scripts/docs_numbers.py --receiver RESULTS_DIR   # the path-patching receiver (build_figures.sh)
    python scripts/docs_numbers.py --midrev                 # the robustness mid-training revision (same)
    python scripts/docs_numbers.py --name-movers RESULTS_DIR  # the heads backup-heads ablates (same)

One line per number, "label value", e.g. ``igpoints.r.midpoint5 0.9823``; the label names the
result file's measure, and the comment above each block says which docs lines quote it. Every
value is re-measured by the script's commands, never typed in: after a retrain, copy them from
here into the docs (rounded as the docs round them). Exit status 1 if a result file is missing.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np

import nnsight_reasoning as nr
from nnsight_reasoning.experiments.circuit import overlap, stability


def _card_script():
    """scripts/make_model_card.py as a module (for its Pearson r, ``_r``), as tests/test_models.py loads it."""
    spec = importlib.util.spec_from_file_location("make_model_card", Path(__file__).with_name("make_model_card.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pearson_r = _card_script()._r  # Pearson r over the cells both define (NaN: no edge), as the card's r_exact_ig*

MISSING: list[str] = []


def load(results: Path, name: str):
    path = results / f"{name}.nc"
    if not path.is_file():
        MISSING.append(str(path))
        return None
    return nr.load_result(path)


def out(label: str, value) -> None:
    if isinstance(value, (float, np.floating)):
        value = "nan" if math.isnan(value) else f"{float(value):.4g}"
    elif isinstance(value, (bool, np.bool_)):
        value = "yes" if value else "no"
    print(f"{label} {value}", flush=True)


def checkpoints(ds):
    return [str(c) for c in ds["checkpoint"].values]


def logits_top_head(logits) -> str:
    """The head with the largest direct effect on the logits (path patching, receivers logits): the
    name-mover candidate, and the receiver of build_figures.sh's q/k/v runs."""
    eff = logits["relative_effect"]
    heads = eff.where(eff["sender_kind"] == "head", drop=True)
    return str(heads["sender"].values[int(np.nanargmax(np.abs(heads.values)))])


def name_movers(components) -> str:
    """The name movers of ``ioi-components`` at its last checkpoint, aL.H comma-joined: the heads
    build_figures.sh's backup-heads run ablates."""
    from nnsight_reasoning.results.io import last_checkpoint

    mask = last_checkpoint(components)["name_mover"].values
    return ",".join(f"a{layer}.{head}" for layer, head in zip(*np.nonzero(mask)))


def backup(R: Path) -> None:
    """Backup name movers over training: docs/tigges.md, docs/experiments/backup-heads.md."""
    for name in ("backup_heads", "backup_heads_copy"):
        ds = load(R, name)
        if ds is None:
            continue
        for c in checkpoints(ds):
            one = ds.sel(checkpoint=c)
            clean = float(one["logit_diff"].sel(condition="clean").mean())
            out(f"{name}.{c}.ablated", ",".join(f"a{la}.{h}" for la, h in zip(*np.nonzero(one["name_mover"].values)))
                or "none")
            out(f"{name}.{c}.logit_diff.clean", clean)
            out(f"{name}.{c}.logit_diff.ablated", float(one["logit_diff"].sel(condition="ablated").mean()))
            out(f"{name}.{c}.summed_backup", float(one["summed_backup"]))
            b = one["backup"].values
            if np.isfinite(b).any():
                layer, head = np.unravel_index(int(np.nanargmax(b)), b.shape)
                out(f"{name}.{c}.largest", f"a{layer}.{head}")
                out(f"{name}.{c}.largest.backup", float(b[layer, head]))


def self_repair(R: Path) -> None:
    """Self-repair at main, every head, resample and mean ablation: docs/experiments/self-repair.md."""
    for name in ("self_repair", "self_repair_mean"):
        ds = load(R, name)
        if ds is None:
            continue
        for la, h in zip(*np.nonzero(np.isfinite(ds["direct_effect"].values))):
            one = ds.sel(layer=la, head=h)
            for v in ("direct_effect", "logit_change", "self_repair", "replaced_direct_effect", "norm_rescaling"):
                if v in one:  # results written before replaced_direct_effect / norm_rescaling existed lack them
                    out(f"{name}.a{la}.{h}.{v}", float(one[v]))
            if "norm_rescaling" in one:  # what the components after the head make up
                out(f"{name}.a{la}.{h}.after", float(one["self_repair"] - one["replaced_direct_effect"]
                                                     - one["norm_rescaling"]))


def logit_lens(R: Path) -> None:
    """The logit lens over training (64 arithmetic prompts): docs/experiments/logit-lens.md."""
    ds = load(R, "lens_all")
    if ds is None:
        return
    for c in ds["checkpoint"].values:
        for v in ("accuracy", "mean_p_answer", "mean_rank"):
            for li, x in zip(ds["layer"].values, ds[v].sel(checkpoint=c).values):
                out(f"logit_lens.{c}.{v}.layer{li}", float(x))


def mid_revision(card: dict) -> str:
    """The first revision at which the model card's k-th smallest accuracy reaches 0.5 (the task
    half learnt): where robustness is measured part-way through training."""
    from nnsight_reasoning import embedded

    acc = card["accuracy"]
    half = [r for r in embedded.revisions() if acc[r]["kth_smallest"] >= 0.5]
    if not half:
        sys.exit("no revision reaches k-th smallest accuracy 0.5 (model card): choose MIDREV by hand")
    return half[0]


def path_patching(R: Path) -> None:
    # docs/experiments/path-patching.md, docs/tigges.md (X-pplogits, BF-pp, X-ppkv)
    logits = load(R, "path_patching_logits")
    top_head = None
    if logits is not None:
        eff = logits["relative_effect"]
        top_head = logits_top_head(logits)
        top_node = str(eff["sender"].values[int(np.nanargmax(np.abs(eff.values)))])
        out("pathpatch.logits.top_head", top_head)  # the receiver of the q/k/v runs below must be this head
        out(f"pathpatch.logits.{top_head}", float(eff.sel(sender=top_head)))
        out("pathpatch.logits.top_node", top_node)
        out(f"pathpatch.logits.{top_node}", float(eff.sel(sender=top_node)))
    for name, part in (("path_patching", "q"), ("path_patching_k", "k"), ("path_patching_v", "v")):
        ds = load(R, name)
        if ds is None:
            continue
        receiver = str(ds.attrs["receivers"])
        eff = ds["relative_effect"]
        order = np.argsort(-np.abs(np.nan_to_num(eff.values)))
        if part == "q":  # the two strongest senders by name, then the largest of the rest
            out("pathpatch.q.receiver", receiver)
            if top_head is not None:
                out("pathpatch.q.receiver_is_logits_top_head", receiver == top_head)
            for i in order[:2]:
                out(f"pathpatch.q.{eff['sender'].values[i]}", float(eff.values[i]))
            out("pathpatch.q.max_abs_other", float(np.abs(eff.values[order[2:]]).max()))
        else:
            out(f"pathpatch.{part}.max_abs", float(np.nanmax(np.abs(eff.values))))


def robustness(R: Path) -> None:
    # docs/mechanistic_probe.md, docs/experiments/robustness.md (X-rob64, X-rob1500)
    for name in ("robustness_drop2", "robustness_drop2_mid"):
        ds = load(R, name)
        if ds is None:
            continue
        rev = str(ds.attrs["revision"])
        out(f"robustness.drop2.{rev}.accuracy_clean", float(ds["correct"].mean()))
        out(f"robustness.drop2.{rev}.accuracy_corrupt", float(ds["correct_corrupt"].mean()))
        for probe in ds["probe"].values:
            out(f"robustness.drop2.{rev}.r.{probe}", float(ds["correlation"].sel(probe=probe)))


def kth_smallest(R: Path) -> None:
    # docs/mechanistic_probe.md (X-kthcorrupt): 500 prompts, seed 2026, n_corrupt=2
    for corrupt in ("none", "shuffle", "drop", "perturb"):
        ds = load(R, "kth_smallest" if corrupt == "none" else f"kth_smallest_{corrupt}")
        if ds is not None:
            out(f"kth_smallest.accuracy.{corrupt}", float(ds["accuracy"]))


def circuits(R: Path) -> None:
    # smallest greedy arithmetic circuit: docs/tigges.md, docs/experiments/circuit.md (X-mincirc)
    ds = load(R, "circuit_min")
    if ds is not None:
        for v in ("min_size", "min_n_edges", "min_faithfulness"):
            out(f"mincirc.arithmetic.{v}", ds[v].item())
    # top-100 EAP circuit per ablation: docs/tigges.md, circuit.md (X-ablation)
    for ablation in ("patching", "mean", "zero"):
        ds = load(R, f"circuit_ablation_{ablation}")
        if ds is not None:
            out(f"ablation.top100.faithfulness.{ablation}", float(ds["faithfulness"].sel(size=100)))
    # integration points against exact edge patching, Pearson r over the edges: docs/tigges.md, circuit.md
    # (X-igpoints); EAP-IG on activations: tigges.md (X-igact)
    r = {}
    for task, suffix, runs in (("arithmetic", "", ("midpoint5", "midpoint30", "eap_ig5", "eap_ig30", "clean_corrupted",
                                                   "eap", "activations5")),
                               ("ioi", "_ioi", ("eap_ig5", "activations5"))):
        exact = load(R, f"edge_patching{suffix}")
        for run in runs:
            est = load(R, f"scores_{run}{suffix}")
            if exact is not None and est is not None:
                r[task, run] = pearson_r(exact["score"].values, est["score"].values)
    for (task, run), value in r.items():
        if task == "arithmetic" and run != "activations5":
            out(f"igpoints.r.{run}", value)
    for (task, run), value in r.items():  # the input variant (EAP-IG's points, 5 steps) against activations
        if run in ("eap_ig5", "activations5"):
            out(f"igact.r.{task}.{'inputs' if run == 'eap_ig5' else 'activations'}", value)
    # sentiment: docs/tigges.md (X-sentiment)
    ds = load(R, "circuit_sentiment")
    if ds is not None:
        out("circuit.sentiment.clean_logit_diff", float(ds["clean_logit_diff"].mean()))
        out("circuit.sentiment.corrupt_logit_diff", float(ds["corrupt_logit_diff"].mean()))
        out("circuit.sentiment.faithfulness.50", float(ds["faithfulness"].sel(size=50)))
    # greater-than, greedy, smallest circuit >= 0.8 (prob_diff): docs/tigges.md (X-gt)
    ds = load(R, "circuit_greater_than")
    if ds is not None:
        out(f"circuit.greater_than.clean_{ds.attrs['metric']}", float(ds["clean_logit_diff"].mean()))
        out(f"circuit.greater_than.corrupt_{ds.attrs['metric']}", float(ds["corrupt_logit_diff"].mean()))
        for v in ("min_size", "min_n_edges", "min_faithfulness"):
            out(f"circuit.greater_than.{v}", ds[v].item())
        edges = ds["min_circuit"].stack(edge=("upstream", "downstream"))
        out("circuit.greater_than.min_circuit",
            ",".join(f"{u}->{d}" for u, d in edges["edge"].values[edges.values.astype(bool)]))
    # the arithmetic sweep of the figures (64 pairs): overlap with main and stability of the 50-edge
    # circuits, docs/tigges.md, circuit.md (BF-circ)
    ds = load(R, "circuit")
    if ds is not None:
        jac = overlap(ds, 50)
        last = checkpoints(ds)[-1]
        for c in checkpoints(ds):
            out(f"circuit.overlap50.{c}-{last}", float(jac.sel(checkpoint=c, checkpoint_b=last)))
        st = stability(ds, 50)
        for t, (a, b) in enumerate(zip(st["from_checkpoint"].values, st["to_checkpoint"].values)):
            for v in ("weighted_jaccard", "ged"):
                out(f"circuit.stability50.{a}-{b}.{v}", st[v].values[t].item())


def binding(R: Path) -> None:
    # docs/binding.md (X-bindfam, X-bindcrossmeans): 100 contexts, 200 estimate
    # contexts, train/test words (means, cyclic), the repository's windows; every family the script ran
    for kind in ("means", "cyclic", "factorization"):
        if not any(R.glob(f"binding_{kind}_*.nc")):
            MISSING.append(str(R / f"binding_{kind}_*.nc"))
    for path in sorted(R.glob("binding_means_*.nc")):
        name = path.stem[len("binding_means_"):]
        ds = load(R, path.stem)
        acc = ds["means_accuracy"].sel(query=["E0", "E1"]).mean("query")  # as the CLI's summary table
        out(f"binding.means.{name}.accuracy.min", float(acc.min()))
        out(f"binding.means.{name}.accuracy.max", float(acc.max()))
        if "_from_" in name:
            continue
        # |Δ| per edited token from the first layer on (depth 0, the embeddings, is 0; NaN: no such token)
        for kind in ds["kind"].values:
            for tok in ds["token"].values:
                norm = ds["delta_norm"].sel(kind=kind, token=tok).values[1:]
                if np.isfinite(norm).any():
                    out(f"binding.means.{name}.delta_norm.{kind}{int(tok)}.min", float(np.nanmin(norm)))
                    out(f"binding.means.{name}.delta_norm.{kind}{int(tok)}.max", float(np.nanmax(norm)))
        # how far ±Δ (mean vectors) moves the answers' log-probabilities against the clean run: mean
        # |shift| over the queries E0, E1, both answers and the contexts per intervention, and the largest
        logp = ds["means_logprob"].sel(vector="mean", query=["E0", "E1"])
        shift = abs(logp - logp.sel(intervention="none")).drop_sel(intervention="none")
        for i in shift["intervention"].values:
            out(f"binding.means.{name}.logprob_shift.{i}", float(shift.sel(intervention=i).mean()))
        out(f"binding.means.{name}.logprob_shift.max", float(shift.max()))
    for path in sorted(R.glob("binding_cyclic_*.nc")):
        name = path.stem[len("binding_cyclic_"):]
        ds = load(R, path.stem)
        for target in ds["target"].values:
            out(f"binding.cyclic.{name}.{target}", float(ds["cyclic_accuracy"].sel(target=target)))
    for path in sorted(R.glob("binding_factorization_*.nc")):
        name = path.stem[len("binding_factorization_"):]
        acc = load(R, path.stem)["outcome_accuracy"]  # (side, swap_entity, swap_attribute)
        both = acc.sel(swap_entity=1, swap_attribute=1)
        alone = np.concatenate([acc.sel(swap_entity=1, swap_attribute=0).values,
                                acc.sel(swap_entity=0, swap_attribute=1).values])
        out(f"binding.factorization.{name}.both.min", float(both.min()))
        out(f"binding.factorization.{name}.both.max", float(both.max()))
        out(f"binding.factorization.{name}.one_alone.min", float(alone.min()))
        out(f"binding.factorization.{name}.one_alone.max", float(alone.max()))


def sweeps(R: Path) -> None:
    # CSPA over training: docs/tigges.md, docs/experiments/copy-suppression.md (X-cspasweep)
    ds = load(R, "cspa_sweep")
    if ds is not None:
        best = ds["cspa"].max(("layer", "head"))
        out("cspa.sweep.best_head.max_over_checkpoints", float(best.max()))
        out(f"cspa.sweep.best_head.{checkpoints(ds)[-1]}", float(best.isel(checkpoint=-1)))
        out("cspa.sweep.kl_ablated.max", float(ds["kl_ablated"].max()))
    # self-repair over training: docs/experiments/self-repair.md (the share of the direct effect of the
    # heads of layers 2 and later with |direct effect| > 0.1 that the logit does not lose)
    ds = load(R, "self_repair_sweep")
    if ds is not None:
        late = ds.where(ds["layer"] >= 2)
        strong = abs(late["direct_effect"]) > 0.1
        for c in checkpoints(ds):
            s = strong.sel(checkpoint=c)
            share = float(late["self_repair"].sel(checkpoint=c).where(s).sum() /
                          late["direct_effect"].sel(checkpoint=c).where(s).sum()) if bool(s.any()) else float("nan")
            out(f"self_repair.sweep.late_share.{c}", share)
            # of what the ablation removes: net of the replacement's own direct effect
            if "replaced_direct_effect" in late and bool(s.any()):
                one = late.sel(checkpoint=c).where(s)
                removed = (one["direct_effect"] - one["replaced_direct_effect"]).sum()
                out(f"self_repair.sweep.late_share_of_removed.{c}",
                    float((one["self_repair"] - one["replaced_direct_effect"]).sum() / removed))
                if "norm_rescaling" in one:  # of that, the final norm's rescaling alone
                    out(f"self_repair.sweep.late_norm_share_of_removed.{c}",
                        float(one["norm_rescaling"].sum() / removed))
            out(f"self_repair.sweep.max_direct.{c}", float(abs(ds["direct_effect"].sel(checkpoint=c)).max()))
    # mean logit difference over training: docs/tigges.md, docs/experiments/evaluate.md
    # (X-evaltasks; 200 prompts, seed 0, as the circuits notebook's cell 8)
    for task in ("ioi", "greater_than", "sentiment"):
        ds = load(R, f"evaluate_{task}")
        if ds is not None:
            for c, v in zip(checkpoints(ds), ds["mean_logit_diff"].values):
                out(f"evaluate.{task}.mean_logit_diff.{c}", float(v))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("results", nargs="?", type=Path, help="the results dir build_figures.sh wrote")
    group.add_argument("--receiver", type=Path, metavar="RESULTS_DIR",
                       help="print the path-patching receiver from RESULTS_DIR/path_patching_logits.nc")
    group.add_argument("--midrev", action="store_true", help="print the robustness mid-training revision (card)")
    group.add_argument("--name-movers", type=Path, metavar="RESULTS_DIR",
                       help="print the name movers at main from RESULTS_DIR/ioi_components.nc")
    args = ap.parse_args()
    if args.midrev:
        from nnsight_reasoning import embedded

        print(mid_revision(embedded.card()))
        return
    # a choice build_figures.sh derives from one result file
    for where, name, finding in ((args.receiver, "path_patching_logits", logits_top_head),
                                 (args.name_movers, "ioi_components", name_movers)):
        if where is not None:
            ds = load(where, name)
            if ds is None:
                sys.exit(f"no {name}.nc in {where}")
            print(finding(ds))
            return
    R = args.results
    for block in (path_patching, robustness, kth_smallest, circuits, binding, sweeps, backup, self_repair, logit_lens):
        block(R)
    if MISSING:
        sys.exit("missing result files (run scripts/build_figures.sh first): " + ", ".join(MISSING))


if __name__ == "__main__":
    main()
