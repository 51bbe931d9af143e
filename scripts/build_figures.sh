#!/usr/bin/env bash
# Re-run the documented experiments on the embedded model and redraw every figure in docs/
#
#     bash scripts/build_figures.sh [RESULTS_DIR]     # default: results/ (outputs go to RESULTS_DIR/log.txt)
#
# Run after retraining the embedded model (scripts/train_embedded.py); each command is the
# one the docs pages show beside their figures, so the figures and the printed tables agree.
# The last section re-measures the numbers the docs cite without a figure; scripts/docs_numbers.py
# prints them (and the ones computed on top of the results) to RESULTS_DIR/docs_numbers.txt.
#
# Three choices are findings of the model, derived here rather than typed (scripts/docs_numbers.py):
# the path-patching receiver RECEIVER is the head with the largest direct effect on the logits
# (path_patching_logits.nc, run first: the one name-mover candidate), and the robustness
# mid-training checkpoint MIDREV is the first revision whose model-card k-th smallest accuracy
# reaches 0.5, and the heads backup-heads ablates MOVERS are ioi-components' name movers at main.
# After a retrain, the docs that name them (docs/experiments/path-patching.md, its
# schema command; docs/mechanistic_probe.md, docs/experiments/robustness.md) follow the log.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-results}
mkdir -p "$R" docs
# experiments overwrite their earlier results (--force); plot takes no such option
run() {
  local force=(); [ "$1" != plot ] && force=(--force)
  echo "\$ reason-interp $*" | tee -a "$R/log.txt"; reason-interp "$@" "${force[@]}" 2>&1 | tee -a "$R/log.txt"
}
: > "$R/log.txt"

# Path patching at main, 64 IOI pairs, direct effects on the logits: RECEIVER is its largest head
run path-patching --receivers logits --n-prompts 64 --out "$R/path_patching_logits.nc"
RECEIVER=$(python scripts/docs_numbers.py --receiver "$R")
MIDREV=$(python scripts/docs_numbers.py --midrev)
echo "RECEIVER=$RECEIVER (largest head on the logits) MIDREV=$MIDREV (k-th smallest half learnt, model card)" \
  | tee -a "$R/log.txt"

run patch --task arithmetic --out "$R/patch.nc"
run evaluate --task arithmetic --revisions all --out "$R/curve.nc"
run plot "$R/curve.nc" --out docs/learning_curve_arithmetic.png
run logit-lens --task arithmetic --n-prompts 64 --revisions all --out "$R/lens_all.nc"
run plot "$R/lens_all.nc" --out docs/logit_lens_arithmetic.png
run patch --task arithmetic --intervention-type operands --param operations=+-*/ --template stolfo \
    --site embed --site attn --site mlp --positions all --correct-only --out "$R/patch_roles.nc"
run plot "$R/patch_roles.nc" --kind roles --out docs/patch_roles_arithmetic.png
run plot "$R/patch_roles.nc" --kind prediction --out docs/patch_prediction_arithmetic.png
run patch --task arithmetic --revisions all --out "$R/patch_sweep.nc"
run plot "$R/patch_sweep.nc" --out docs/patch_over_training_arithmetic.png
run attention --n-prompts 256 --patterns all --out "$R/attention.nc"
run plot "$R/attention.nc" --kind heatmap --out docs/attention_heatmap.png
run plot "$R/attention.nc" --kind entropy --out docs/head_entropy.png
run plot "$R/attention.nc" --kind rank --out docs/attention_by_rank.png
run prune --n-prompts 512 --out "$R/prune.nc"
run plot "$R/prune.nc" --out docs/head_pruning.png
# MechanisticProbe's attention-flow case study (docs/mechanistic_probe.md): the figure is the unpruned flow
run prune --task kth_smallest --length 10 --n-prompts 512 --out "$R/prune10.nc"
run attention --task kth_smallest --length 10 --n-prompts 256 --param place=5,8 --patterns all \
    --pruned "$R/prune10.nc" --pruned-fraction 0.4 --out "$R/flow_pruned.nc"
run attention --task kth_smallest --length 10 --n-prompts 256 --param place=5,8 --patterns all --out "$R/flow.nc"
run plot "$R/flow.nc" --kind flow --out docs/attention_flow.png
run probe --n-prompts 512 --out "$R/probe.nc"
run plot "$R/probe.nc" --out docs/probe_layers.png
run probe --n-prompts 512 --revisions all --out "$R/probe_sweep.nc"
run circuit --n-prompts 64 --ig-steps 5 --revisions all --out "$R/circuit.nc"
run plot "$R/circuit.nc" --kind circuit --out docs/circuit.png
run plot "$R/circuit.nc" --kind faithfulness --out docs/circuit_faithfulness.png
run plot "$R/circuit.nc" --kind overlap --out docs/circuit_overlap.png
run circuit --task ioi --n-prompts 64 --ig-steps 5 --out "$R/circuit_ioi.nc"
run heads --revisions all --out "$R/heads.nc"
run plot "$R/heads.nc" --out docs/head_scores.png
run neurons --out "$R/neurons.nc"
run plot "$R/neurons.nc" --out docs/cot_neurons.png
run binding --n-contexts 200 --n-pairs 2 --out "$R/binding.nc"
run plot "$R/binding.nc" --out docs/binding.png
run binding --n-contexts 200 --n-pairs 3 --out "$R/binding3.nc"
run successor-heads --revisions all --out "$R/successor.nc"
run plot "$R/successor.nc" --out docs/successor_heads.png
run path-patching --param corruption=swap --receivers "$RECEIVER" --receiver-input q --position last --n-prompts 64 \
    --out "$R/path_patching.nc"
run plot "$R/path_patching.nc" --out docs/path_patching.png
run ioi-components --revisions all --out "$R/ioi_components.nc"
run plot "$R/ioi_components.nc" --out docs/ioi_components.png
# greater-than components, each checkpoint read with its own smallest faithful circuit
run circuit --task greater_than --n-prompts 200 --ig-steps 5 --selection greedy --min-fraction 0.8 --search 10:200:10 \
    --revisions all --out "$R/gt_circuit.nc"
run greater-than-components --circuit "$R/gt_circuit.nc" --revisions all --out "$R/gt_components.nc"
run plot "$R/gt_components.nc" --out docs/greater_than_components.png
# backup name movers: the name movers ioi-components finds at main ablated at every checkpoint, and
# the repository's own rule (copy score >= 75 %, each checkpoint's heads)
MOVERS=$(python scripts/docs_numbers.py --name-movers "$R")
if [ -n "$MOVERS" ]; then
  run backup-heads --heads "$MOVERS" --revisions all --out "$R/backup_heads.nc"
  run plot "$R/backup_heads.nc" --out docs/backup_heads.png
else  # a retrained model without name movers: docs/backup_heads.png is stale, say so in the log
  echo "no name movers at main: backup-heads --heads skipped" | tee -a "$R/log.txt"
fi
run backup-heads --revisions all --out "$R/backup_heads_copy.nc"
run copy-suppression --out "$R/cspa.nc"
run plot "$R/cspa.nc" --out docs/cspa.png
run self-repair --out "$R/self_repair.nc"
run plot "$R/self_repair.nc" --out docs/self_repair.png
run self-repair --ablation mean --out "$R/self_repair_mean.nc"   # docs/experiments/self-repair.md
run robustness --out "$R/robustness.nc"
run plot "$R/robustness.nc" --out docs/robustness.png
run neurons --generate --n-prompts 50 --max-new-tokens 48 --out "$R/cot_generation.nc"
run plot "$R/cot_generation.nc" --out docs/cot_generation.png

# ---------------------------------------------------------------------------------------------
# numbers the docs cite (no figure)
# ---------------------------------------------------------------------------------------------
# Each block names the docs pages that quote it (the inventory's X-* key in brackets; grep a page
# for the number, line numbers move); the settings are the ones those lines state. scripts/docs_numbers.py (the end) prints every number,
# including those computed on top of the files (Pearson r of edge scores, circuit stability, Δ norms).

# Path patching at main, 64 IOI pairs, into RECEIVER's keys and values at the last position, IO
# and S1 swapped (the logits run RECEIVER is chosen from is at the top).
# docs/experiments/path-patching.md, docs/tigges.md [X-pplogits, X-ppkv]. The
# docs' k/v number ("under 0.2 % on 4 pairs", tigges.md) came from an ad-hoc run on 4 pairs;
# this uses the 64 pairs of the q run and of path-patching.md.
for input in k v; do
  run path-patching --param corruption=swap --receivers "$RECEIVER" --receiver-input $input --position last \
      --n-prompts 64 --out "$R/path_patching_$input.nc"
done

# Probe score against robustness, two numbers dropped, 64 subsets (256 prompts, the default), at
# main and at MIDREV (chosen from the card at the top). docs/mechanistic_probe.md,
# docs/experiments/robustness.md [X-rob64, X-rob1500]
run robustness --n-corrupt 2 --n-subsets 64 --out "$R/robustness_drop2.nc"
run robustness --n-corrupt 2 --n-subsets 64 --revision "$MIDREV" --out "$R/robustness_drop2_mid.nc"

# k-th smallest accuracy, uncorrupted and under each corruption with n_corrupt=2, 500 prompts.
# docs/mechanistic_probe.md [X-kthcorrupt]. The docs do not give the seed: 2026, the model
# card's (its kth_smallest accuracy at main, 0.992, is the uncorrupted one).
run evaluate --task kth_smallest --n-prompts 500 --seed 2026 --out "$R/kth_smallest.nc"
for corrupt in shuffle drop perturb; do
  run evaluate --task kth_smallest --n-prompts 500 --seed 2026 --param corrupt=$corrupt --param n_corrupt=2 \
      --out "$R/kth_smallest_$corrupt.nc"
done

# The smallest greedy arithmetic circuit keeping 0.8 of the clean logit difference, 32 pairs (the
# default), EAP-IG 5 steps. docs/tigges.md, docs/experiments/circuit.md [X-mincirc].
# The docs give no search grid: the default 25:1600:25 (tigges.md shows it), capped at the 191 edges.
run circuit --ig-steps 5 --selection greedy --min-fraction 0.8 --out "$R/circuit_min.nc"

# The top-100 EAP circuit under each ablation, 16 arithmetic pairs, top-n.
# docs/tigges.md, docs/experiments/circuit.md [X-ablation]
for ablation in patching mean zero; do
  run circuit --n-prompts 16 --ig-steps 1 --sizes 100 --ablation $ablation --out "$R/circuit_ablation_$ablation.nc"
done

# Integration points against exact edge patching: edge scores only (--sizes ''), 16 arithmetic
# pairs (the model card's half of its 32); docs_numbers.py gives Pearson r over the 191 edges.
# docs/tigges.md, docs/experiments/circuit.md [X-igpoints]. circuit.md
# compares 5 midpoints with "the default 30" (midpoints), tigges.md lists 30 of EAP-IG's points:
# both are run.
run circuit --exact --n-prompts 16 --out "$R/edge_patching.nc"
run circuit --n-prompts 16 --sizes '' --ig-steps 5 --out "$R/scores_midpoint5.nc"
run circuit --n-prompts 16 --sizes '' --ig-steps 30 --out "$R/scores_midpoint30.nc"
run circuit --n-prompts 16 --sizes '' --ig-steps 5 --ig-points eap_ig --out "$R/scores_eap_ig5.nc"
run circuit --n-prompts 16 --sizes '' --ig-steps 30 --ig-points eap_ig --out "$R/scores_eap_ig30.nc"
run circuit --n-prompts 16 --sizes '' --ig-points clean_corrupted --out "$R/scores_clean_corrupted.nc"
run circuit --n-prompts 16 --sizes '' --ig-steps 1 --out "$R/scores_eap.nc"

# EAP-IG on activations against the input variant (5 of EAP-IG's points), both against exact edge
# patching, 16 pairs, IOI and arithmetic (arithmetic's input variant and exact run are above).
# docs/tigges.md [X-igact]
run circuit --n-prompts 16 --sizes '' --ig-steps 5 --ig-points eap_ig --ig-variant activations \
    --out "$R/scores_activations5.nc"
run circuit --task ioi --exact --n-prompts 16 --out "$R/edge_patching_ioi.nc"
run circuit --task ioi --n-prompts 16 --sizes '' --ig-steps 5 --ig-points eap_ig --out "$R/scores_eap_ig5_ioi.nc"
run circuit --task ioi --n-prompts 16 --sizes '' --ig-steps 5 --ig-points eap_ig --ig-variant activations \
    --out "$R/scores_activations5_ioi.nc"

# Sentiment: clean/corrupted logit difference and the top-50 circuit's faithfulness, 32 pairs,
# EAP-IG 5 steps. docs/tigges.md [X-sentiment]. The docs say "the top 50 edges": top-n
# selection (the default), not greedy.
run circuit --task sentiment --ig-steps 5 --out "$R/circuit_sentiment.nc"

# Greater-than at main: the smallest greedy circuit keeping 0.8 of the clean probability
# difference, 32 pairs, EAP-IG 5 steps. docs/tigges.md [X-gt] (the circuits notebook's
# cell 10 runs the same per checkpoint)
run circuit --task greater_than --ig-steps 5 --selection greedy --min-fraction 0.8 --search 10:200:10 \
    --out "$R/circuit_greater_than.nc"

# binding-iclr's tests per family: mean interventions (2 pairs) and cyclic swaps (3 pairs), 100
# contexts, 200 estimate contexts (the default), train/test words (the default for these measures),
# seed 0; factorization on shapes; Δ estimated on another family and applied to capitals.
# docs/binding.md, docs/experiments/binding.md [X-bindfam, X-bindcrossmeans].
# capitals is run too (the binding notebook's family): its Δ norms and log-probability shifts
# (binding.md) are read from binding_means_capitals.nc. The cross-family runs are numbers
# the docs give from v3 (binding.md).
for family in capitals cities fruits occupations shapes; do
  run binding --measure means --family $family --n-contexts 100 --out "$R/binding_means_$family.nc"
  run binding --measure cyclic --n-pairs 3 --family $family --n-contexts 100 --out "$R/binding_cyclic_$family.nc"
done
run binding --measure factorization --family shapes --n-contexts 100 --out "$R/binding_factorization_shapes.nc"
for estimate in cities fruits occupations; do
  run binding --measure means --family capitals --estimate-family $estimate --n-contexts 100 \
      --out "$R/binding_means_capitals_from_$estimate.nc"
  run binding --measure cyclic --n-pairs 3 --family capitals --estimate-family $estimate --n-contexts 100 \
      --out "$R/binding_cyclic_capitals_from_$estimate.nc"
done

# CSPA over all checkpoints (defaults: 17 × 61 tokens of task-prompt documents, every head).
# docs/tigges.md, docs/experiments/copy-suppression.md [X-cspasweep]
run copy-suppression --revisions all --out "$R/cspa_sweep.nc"
# docs/experiments/self-repair.md (the share of the later heads' direct effect made up, per checkpoint)
run self-repair --n-sequences 60 --seq-len 64 --revisions all --out "$R/self_repair_sweep.nc"

# Mean logit difference over training, 200 prompts, seed 0 (the defaults; the circuits notebook's
# cell 8). docs/tigges.md, docs/experiments/evaluate.md [X-evaltasks]
for task in ioi greater_than sentiment; do
  run evaluate --task $task --revisions all --out "$R/evaluate_$task.nc"
done

# Every number of this section, plus those computed on top of the results (Pearson r of edge scores,
# overlap and stability of circuit.nc's 50-edge circuits, Δ norms, path patching's top head)
echo "\$ python scripts/docs_numbers.py $R" | tee -a "$R/log.txt"
python scripts/docs_numbers.py "$R" 2>&1 | tee "$R/docs_numbers.txt"
