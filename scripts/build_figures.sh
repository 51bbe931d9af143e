#!/usr/bin/env bash
# Re-run the documented experiments on the embedded model and redraw every figure in docs/
#
#     bash scripts/build_figures.sh [RESULTS_DIR]     # default: results/ (outputs go to RESULTS_DIR/log.txt)
#
# Run after retraining the embedded model (scripts/train_embedded.py); each command is the
# one the docs pages show beside their figures, so the figures and the printed tables agree.
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

run patch --task arithmetic --out "$R/patch.nc"
run evaluate --task arithmetic --revisions all --out "$R/curve.nc"
run plot "$R/curve.nc" --out docs/learning_curve_arithmetic.png
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
run path-patching --param corruption=swap --receivers a3.3 --receiver-input q --position last --n-prompts 64 \
    --out "$R/path_patching.nc"
run plot "$R/path_patching.nc" --out docs/path_patching.png
run ioi-components --revisions all --out "$R/ioi_components.nc"
run plot "$R/ioi_components.nc" --out docs/ioi_components.png
run copy-suppression --out "$R/cspa.nc"
run plot "$R/cspa.nc" --out docs/cspa.png
run robustness --out "$R/robustness.nc"
run plot "$R/robustness.nc" --out docs/robustness.png
run neurons --generate --n-prompts 50 --max-new-tokens 48 --out "$R/cot_generation.nc"
run plot "$R/cot_generation.nc" --out docs/cot_generation.png
