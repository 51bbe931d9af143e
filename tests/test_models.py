"""Model loading (embedded, local directories, revision layouts) and the model card."""
from __future__ import annotations

import functools
import json
import shutil
import sys

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import nnsight_reasoning as nr
from nnsight_reasoning import embedded
from nnsight_reasoning.models import ModelInfo
from tests.script_modules import SCRIPTS, load_script


def test_embedded_revisions_are_shipped():
    revs = embedded.revisions()
    assert len(revs) >= 12 and revs[0] == "step0" and revs[-1] == "main"
    steps = [int(r[4:]) for r in revs[:-1]]
    assert steps == sorted(steps)
    size = sum(f.stat().st_size for f in embedded.REVISIONS_DIR.rglob("*") if f.is_file())
    assert size <= 40 * 2**20
    for r in revs:
        assert (embedded.revision_path(r) / "model.safetensors").is_file()


def test_load_embedded_and_provenance():
    m = nr.load_model(revision="step0")
    info = nr.models.model_info(m)
    assert info == ModelInfo("embedded", str(embedded.revision_path("step0")), "step0")
    assert m.config.model_type == "gpt_neox" and m.config._attn_implementation == "eager"
    with pytest.raises(nr.UsageError, match="no revision 'step7'"):
        nr.load_model(revision="step7")


def test_local_directory_and_revision_layout(tiny_model_dir, tmp_path):
    src = tiny_model_dir("gpt2")
    for rev in ("step0", "main"):
        shutil.copytree(src, tmp_path / "pythia-like" / rev)
    m = nr.load_model(tmp_path / "pythia-like", revision="step0")
    assert nr.models.model_info(m).path.endswith("step0")
    with pytest.raises(nr.UsageError, match="no revision directory 'step5'"):
        nr.load_model(tmp_path / "pythia-like", revision="step5")
    with pytest.raises(nr.UsageError, match="not a Hugging Face model directory"):
        nr.load_model(tmp_path / "pythia-like")
    plain = nr.load_model(src)
    assert plain.config.model_type == "gpt2"


def test_hub_ids_fail_cleanly_offline():
    with pytest.raises(nr.UsageError, match="could not load model 'EleutherAI/pythia-160m' revision 'step3000'"):
        nr.load_model("EleutherAI/pythia-160m", revision="step3000")


def test_evaluate_matches_a_plain_forward(embedded_model):
    ds = nr.evaluate(embedded_model, nr.tasks.examples("arithmetic", 12, seed=4), progress=False)
    hf = AutoModelForCausalLM.from_pretrained(nr.models.model_info(embedded_model).path, dtype=torch.float32).eval()
    tok = embedded_model.tokenizer
    for i in range(12):
        ids = tok(str(ds.text.values[i]))["input_ids"]
        ans = tok(" " + str(ds.answer.values[i]), add_special_tokens=False)["input_ids"][0]
        with torch.no_grad():
            probs = torch.softmax(hf(torch.tensor([ids])).logits[0, -1].double(), -1)
        assert ds.p_answer.values[i] == pytest.approx(float(probs[ans]), rel=1e-5, abs=1e-8)
        assert ds.answer_rank.values[i] == int((probs > probs[ans]).sum())
        assert ds.correct.values[i] == int(int(probs.argmax()) == ans)
    assert float(ds.accuracy) == pytest.approx(float(ds.correct.mean()))


def test_evaluate_scores_answer_sets_against_a_plain_forward(embedded_model):
    """Tasks with several correct answers (greater-than: every later year; sentiment: a word
    class): P(answer) is the set's probability, correct means the top-1 token is in the set."""
    hf = AutoModelForCausalLM.from_pretrained(nr.models.model_info(embedded_model).path, dtype=torch.float32).eval()
    tok = embedded_model.tokenizer
    for task in ("greater_than", "sentiment"):
        data = nr.tasks.examples(task, 10, seed=1)
        ds = nr.evaluate(embedded_model, data, batch_size=4, progress=False)
        for i, e in enumerate(data):
            with torch.no_grad():
                probs = torch.softmax(hf(torch.tensor([tok(e.prompt)["input_ids"]])).logits[0, -1].double(), -1)
            ids = [tok(" " + a, add_special_tokens=False)["input_ids"][0] for a in e.answers]
            assert len(set(ids)) == len(ids) == len(e.answers) > 1
            assert ds.p_answer.values[i] == pytest.approx(float(probs[ids].sum()), rel=1e-5, abs=1e-8)
            assert ds.correct.values[i] == int(int(probs.argmax()) in ids)
            assert ds.answer_rank.values[i] == min(int((probs > probs[j]).sum()) for j in ids)


@pytest.mark.parametrize("k", [1, 3, 40])
def test_the_rank_is_the_best_marked_candidates(k):
    """The rank of a row's best candidate among those marked (an answer set's members, not its
    distractors): the fewest tokens above any marked one, as an (n, K, V) comparison of every
    candidate counts them, ties (here many) included; a row of NaN logits ranks last."""
    from nnsight_reasoning.backend.trace_ops import score_answers

    g = torch.Generator().manual_seed(k)
    logits = torch.randint(-6, 6, (6, 300), generator=g).float() / 4  # many exact ties
    logits[5] = float("nan")  # an overflowed row
    ids = torch.randint(0, 300, (6, k), generator=g)
    marked = torch.rand((6, k), generator=g) < 0.5
    marked[:, 0] = True  # at least one member per row
    lp = logits.double().log_softmax(-1)
    every = (lp[:, None, :] > lp.gather(1, ids)[:, :, None]).sum(-1)  # (n, K): each candidate's rank
    for best_of, want in ((None, every.min(1).values), (marked, torch.where(marked, every, 10**6).min(1).values)):
        got_lp, got_lg, rank, top = score_answers(logits, ids, True, best_of)
        want[5] = 300  # NaN: last, never counted correct (a comparison with NaN would give 0)
        assert torch.equal(rank, want) and rank.shape == (6,)
        assert torch.equal(got_lg[:5], logits[:5].double().gather(1, ids[:5]))
        assert torch.equal(top[:5], logits[:5].argmax(-1))
    if k > 1:  # the mask matters: some row's best candidate is an unmarked one
        assert (every.min(1).values[:5] != torch.where(marked, every, 10**6).min(1).values[:5]).any()
    assert int(every[:5].max()) > 0


@pytest.mark.parametrize("task", ["ioi", "greater_than", "sentiment"])
def test_evaluate_adds_tigges_task_measures_against_a_plain_forward(task, embedded_model):
    """circuits-over-time's measures from raw logits: the correct group's mean logit minus the
    distractors' (IOI: IO − S; greater-than: later years − the others), the summed
    probabilities' difference, and the share of prompts with a positive logit difference."""
    hf = AutoModelForCausalLM.from_pretrained(nr.models.model_info(embedded_model).path, dtype=torch.float32).eval()
    tok = embedded_model.tokenizer
    data = nr.tasks.examples(task, 12, seed=2)
    ds = nr.evaluate(embedded_model, data, batch_size=5, progress=False)
    lds = []
    for i, e in enumerate(data):
        with torch.no_grad():
            logits = hf(torch.tensor([tok(e.prompt)["input_ids"]])).logits[0, -1].double()
        good = [tok(" " + a, add_special_tokens=False)["input_ids"][0] for a in e.answers]
        bad = [tok(" " + a, add_special_tokens=False)["input_ids"][0] for a in e.distractors]
        assert not set(good) & set(bad)
        ld = float(logits[good].mean() - logits[bad].mean())
        probs = logits.softmax(-1)
        # the backend's float32 log-probabilities carry ~32 ulps of the row's logit scale (δ), as
        # tests/test_effects.py bounds them: a difference of two group means is off by ≤ 2δ, a
        # probability p by ≤ p·δ, so the difference of the two sums by ≤ δ
        delta = float(32 * np.finfo(np.float32).eps) * float(logits.abs().max())  # a Python float: pytest 9.2 refuses numpy tolerances
        assert ds.logit_diff.values[i] == pytest.approx(ld, abs=2 * delta)
        assert ds.prob_diff.values[i] == pytest.approx(float(probs[good].sum() - probs[bad].sum()), abs=delta)
        lds.append(ld)
    assert float(ds.accuracy_logit_diff) == np.mean(np.array(lds) > 0)
    np.testing.assert_allclose(float(ds.mean_logit_diff), np.mean(ds.logit_diff.values))
    assert "logit_diff" not in nr.evaluate(embedded_model, nr.tasks.examples("arithmetic", 4), progress=False)


# the slow tier: 18 s on 2 cores, which the fast tier's 5-minute budget cannot hold
@pytest.mark.slow
@pytest.mark.parametrize("rev", ["main", "step0"])
def test_model_card_numbers_are_reproducible(rev):
    """The card is measured, not typed: re-measure a revision with the stored settings."""
    card = embedded.card()
    assert set(card["accuracy"]) == set(embedded.revisions())
    model = nr.load_model(revision=rev)
    for col, spec in card["evals"].items():
        ds = nr.evaluate(model, nr.tasks.examples(spec["task"], card["n_prompts"], seed=card["seed"], **spec["params"]), progress=False)
        assert round(float(ds.accuracy), 4) == card["accuracy"][rev][col], (rev, col)
        assert round(float(ds.mean_p_answer), 4) == card["mean_p_answer"][rev][col], (rev, col)
    hs = nr.head_scores(model, nr.tasks.repeated_tokens(**card["head_data"]), progress=False)
    for score in ("previous_token", "duplicate_token", "induction"):
        grid = hs[score].mean("prompt").values
        best = card["head_scores"][rev][score]
        assert round(float(grid.max()), 4) == best["max"] and grid[best["layer"], best["head"]] == grid.max()
    assert "| arithmetic | " in (embedded.ROOT / "MODEL_CARD.md").read_text()


_script = load_script


def test_build_figures_choices_follow_the_model(embedded_model):
    """scripts/build_figures.sh derives three findings instead of typing them (docs_numbers.py): the
    path-patching receiver is the head, never an MLP node, with the largest direct effect on the
    logits; the robustness mid-training revision is the first whose card k-th smallest accuracy
    reaches 0.5; the heads backup-heads ablates are ioi-components' name movers."""
    numbers = _script("docs_numbers")
    pp = nr.path_patching(embedded_model, nr.tasks.ioi(8, tokenizer=embedded_model.tokenizer), receivers="logits")
    heads = [s for s, k in zip(pp.sender.values, pp.sender_kind.values) if k == "head"]
    effect = {s: abs(float(pp.relative_effect.sel(sender=s))) for s in pp.sender.values}
    assert len(heads) < len(effect)  # MLP nodes and the embeddings compete too, and must be skipped
    assert numbers.logits_top_head(pp) == max(heads, key=effect.get)
    card, revs = embedded.card(), embedded.revisions()
    mid = numbers.mid_revision(card)
    kth = [card["accuracy"][r]["kth_smallest"] for r in revs]
    assert kth[revs.index(mid)] >= 0.5 > max(kth[:revs.index(mid)])
    # the heads backup-heads ablates: ioi-components' name movers (at its last checkpoint)
    comp = nr.ioi_components(embedded_model, nr.tasks.ioi(4, corruption="swap", tokenizer=embedded_model.tokenizer),
                             n_sequences=1, seq_len=8, progress=False)
    movers = [f"a{l}.{h}" for l in comp["layer"].values for h in comp["head"].values
              if comp.name_mover.sel(layer=l, head=h)]
    assert movers and numbers.name_movers(comp) == ",".join(movers)


def test_model_card_text_is_drawn_from_card_json():
    """MODEL_CARD.md is exactly what make_model_card.py draws from card.json (never edited by hand;
    `make_model_card.py --render` redraws it)."""
    assert _script("make_model_card").text(embedded.card()) == (embedded.ROOT / "MODEL_CARD.md").read_text()


def test_model_card_says_when_the_model_was_trained_for_attribution_patching():
    """A model trained with ``--linear-paths`` is shaped for the method the card then measures; its
    Training section says so, with the recipe's own settings (v11, trained without it, says nothing)."""
    card = embedded.card()
    mc = _script("make_model_card")
    assert "patch paths" not in mc.text(card)
    linear = {"linear_paths": 10.0, "linear_pairs": 16, "linear_scale": "relative", "linear_sites": "effect"}
    text = mc.text({**card, "training": {**card["training"], **linear}})
    training = text[text.index("## Training"): text.index("## Targets")]
    assert "trained to make its patch paths straight" in training
    assert "each step, 16 arithmetic patching pairs" in training and "10 × the mean" in training
    assert "in proportion to its exact patching effect" in training and "divided by 1 + (f(1) − f(0))²" in training
    uniform = mc.text({**card, "training": {**card["training"], **linear, "linear_sites": "uniform",
                                            "linear_scale": "nats"}})
    assert "uniform over the layers' modules" in uniform and "in nats²" in uniform
    invariant = mc.text({**card, "training": {**card["training"], **linear, "linear_scale": "invariant"}})
    assert "divided by 1 + (f(1) − f(0))², not detached" in invariant
    assert "each step, 16" in training  # --linear-from unset: from step 0
    late = mc.text({**card, "training": {**card["training"], **linear, "linear_from": "mixture+1600",
                                         "linear_from_step": 2726}})
    assert "each step from step 2726 on (before it, none), 16" in late and "rising linearly" not in late
    window = mc.text({**card, "training": {**card["training"], **linear, "linear_from": "mixture+1600",
                                           "linear_from_step": 2726, "linear_until": "mixture+2300",
                                           "linear_until_step": 3426}})
    assert "each step from step 2726 to step 3425 (before and after, none), 16" in window
    ramped = mc.text({**card, "training": {**card["training"], **linear, "linear_ramp": 200}})
    assert "10 × the mean (its weight rising linearly from 0 over the first 200 of those steps) of" in ramped


def test_model_card_says_when_sites_were_dropped_while_training():
    """``--site-drop`` (and its ``--site-drop-from``) and ``--dropout`` change what the model learns, so
    a model trained with them says so in its Training section; v11, trained without, says nothing."""
    card = embedded.card()
    mc = _script("make_model_card")
    assert "zeroed with probability" not in mc.text(card) and "Dropout" not in mc.text(card)

    def training(**extra) -> str:
        text = mc.text({**card, "training": {**card["training"], **extra}})
        return text[text.index("## Training"): text.index("## Targets")]
    assert "at each step, each attention and MLP output at each (sequence, position) was zeroed with " \
           "probability 0.1" in training(site_drop=0.1)
    late = training(site_drop=0.25, site_drop_from="mixture+1600", site_drop_from_step=2726)
    assert "from step 2726 on (before it, none), each attention" in late and "probability 0.25" in late
    assert "Dropout 0.1 on each attention and MLP output" in training(dropout=0.1)


def test_model_card_size_and_training_time_are_the_files():
    """The card's size is the shipped revision files' (pyproject's ``revisions/*/*``; the wheel's
    deflated sum: tests/test_packaging.py), its training time the training log's last row, and
    its target rows are drawn from those."""
    card = embedded.card()
    files = [f for f in embedded.REVISIONS_DIR.glob("*/*") if f.is_file()]
    assert (card["size"]["files"], card["size"]["bytes"]) == (len(files), sum(f.stat().st_size for f in files))
    last = json.loads((embedded.REVISIONS_DIR / "training_log.json").read_text())[-1]
    assert card["training_time"] == {"seconds": last["s"], "by_step": last["step"]}
    # every target row (these three included) follows from the card's measurements
    assert [tuple(t[k] for k in ("target", "value", "bound", "met")) for t in card["targets"]] == \
        _script("make_model_card").targets(card)


def _as_rounded(got, want, unit=1e-4):
    """``got`` equals the card's ``want`` as rounded numbers may: each float within one unit of the
    card's last rounded place (4 decimals; the float32 kernels of another CPU can move a value
    across a rounding boundary: the median |IE| read 32.7086 on the machine that made the card,
    32.7087 on session 79's), strings and list lengths exactly."""
    if isinstance(want, dict):
        assert set(got) == set(want)
        for k in want:
            _as_rounded(got[k], want[k], unit)
    elif isinstance(want, list):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            _as_rounded(g, w, unit)
    elif isinstance(want, float):
        assert got == pytest.approx(want, abs=1.01 * unit, rel=0), (got, want)
    else:
        assert got == want


@pytest.mark.slow
def test_model_card_patching_numbers_are_reproducible():
    """The card's patching figures (median Stolfo IE at the top site, attribution r) re-measured."""
    _as_rounded(_script("make_model_card").patching(nr.load_model()), embedded.card()["patching"])


@pytest.mark.slow
def test_model_card_generation_numbers_are_reproducible():
    """The card's chain-of-thought generation figures (nr.cot_generation: accuracy per prompt
    type and ablation, the neurons found) re-measured; tests/test_cot_generation.py checks the
    pipeline itself against a plain greedy loop."""
    card = embedded.card()
    assert _script("make_model_card").generation(nr.load_model(), card["neurons"]["units"]) == card["generation"]


def _within(value: float, bound: str) -> bool:
    if bound.startswith(">="):
        return value >= float(bound[3:])
    if bound.startswith("<="):
        return value <= float(bound[3:])
    lo, hi = map(float, bound.split("-"))
    return lo <= value <= hi


# The targets of issue 18 this model is shipped for (MODEL_CARD.md lists every target and the misses):
# a retrained model that loses one of them fails here. v5 (scripts/train_embedded.py's history) gained
# CoT generation after answer-only exemplars and lost the binding family `shapes`; v6 kept every v5
# target and raised `shapes` to 0.74 / 0.61; v8 keeps every v6 target and learns `shapes` (1.00 / 1.00);
# v10 keeps every v8 target and meets the size and the 90-minute training budget (bf16, 2,600 mixture steps);
# v11 keeps every v10 target (smoothing by numeric distance, width 4). One-step attribution r (v11 0.33 / 0.57,
# v10 0.07 / 0.39, v8 0.15 / 0.46, v6 0.37 / 0.53) is still missed.
SHIPPED = (
    'arithmetic accuracy',
    'arithmetic mean P(answer)',
    'median abs(Stolfo IE) at the top site',
    'arithmetic held-out (+-*/)',
    'arithmetic held-out, lm-arithmetic templates',
    'number retrieval',
    'factual recall',
    'k-th smallest of 8',
    'k-th smallest, repository format (16 numbers)',
    'IOI ABBA',
    'IOI BABA',
    'greater-than',
    'sentiment',
    'binding families meeting both bounds (of 6)',
    'binding shapes',
    'binding shapes_3',
    'binding cities_width2',
    'binding cities_width2_3',
    'CoT full',
    'CoT equation-only',
    'CoT text-only below equation-only - 0.2',
    'no CoT below equation-only - 0.2',
    'CoT generation, full',
    'CoT generation, equation-only',
    'CoT generation, text-only below equation-only - 0.2',
    'CoT generation, standard below equation-only - 0.2',
    'best induction head at main',
    'best previous-token head at main',
    'best induction head at step0 (chance + 0.1)',
    'size on disk, MB',
    'size in the wheel (deflated), MB',
    'training time, minutes',
)


def test_model_card_targets():
    card = embedded.card()
    targets = {t["target"]: t for t in card["targets"]}
    for t in card["targets"]:  # each verdict follows from its value and bound
        assert t["met"] == _within(t["value"], t["bound"]), t
    assert [name for name in SHIPPED if not targets[name]["met"]] == []
    missed = [t["target"] for t in card["targets"] if not t["met"]]
    text = (embedded.ROOT / "MODEL_CARD.md").read_text()
    assert all(m in text.split("Missed:")[1] for m in missed) if missed else "Every target is met" in text
    # step0 answers at chance: below 5 % top-1 wherever one token is the answer (the set tasks'
    # chance is the set's share of the vocabulary)
    step0 = card["accuracy"]["step0"]
    sets = {k for k, e in card["evals"].items() if e["task"] in ("greater_than", "sentiment")}
    assert max(v for k, v in step0.items() if k not in sets) < 0.05


def test_revision_schedule_is_pythias():
    """The default schedule is Pythia's: step0, powers of two to 512, then evenly spaced (every 500
    steps here, Pythia's 1000); the shipped revisions are that schedule up to main."""
    is_revision = load_script("train_embedded").is_revision
    assert [s for s in range(2001) if is_revision(s, 500)] == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512,
                                                               1000, 1500, 2000]
    assert [s for s in range(3001) if is_revision(s, 1000)][-4:] == [512, 1000, 2000, 3000]
    meta = embedded.training_meta("main")
    steps = [s for s in range(meta["steps"]) if is_revision(s, meta["every"], meta["log_until"])] + [meta["steps"]]
    assert meta["revisions"] == steps
    assert embedded.revisions() == [f"step{s}" for s in steps[:-1]] + ["main"]


@pytest.mark.slow  # five short training runs in subprocesses (~50 s)
def test_training_script_is_deterministic_and_ends_its_curriculum(tmp_path):
    """scripts/train_embedded.py twice with the same seed and threads: byte-identical weights at
    every revision, in each ``--precision`` (and bf16's are not fp32's: the option reaches the
    forward; nor are another ``--weight-decay``'s); the curriculum hands over to the full mixture
    at --early-max at the latest, and every revision records the schedule it was trained on."""
    import subprocess
    import sys

    script = SCRIPTS / "train_embedded.py"
    args = ["--steps", "3", "--early-max", "4", "--every", "4", "--log-until", "4", "--width", "32", "--layers", "1", "--threads", "1"]
    for precision in ("fp32", "bf16"):
        chosen = ["--precision", "fp32"] if precision == "fp32" else []  # bf16 is the default (v10 on)
        for out in ("a", "b"):
            subprocess.run([sys.executable, str(script), *args, *chosen, "--out", str(tmp_path / precision / out)],
                           check=True, capture_output=True, timeout=300)
    revs = sorted(p.name for p in (tmp_path / "fp32" / "a").iterdir() if p.is_dir())
    # the default curriculum has three stages, each cut at --early-max: main is step 4 + 4 + 4 + 3 = 15
    assert revs == ["main", "step0", "step1", "step12", "step2", "step4", "step8"]
    weights = {(p, out, rev): (tmp_path / p / out / rev / "model.safetensors").read_bytes()
               for p in ("fp32", "bf16") for out in ("a", "b") for rev in revs}
    for precision in ("fp32", "bf16"):
        for rev in revs:
            assert weights[precision, "a", rev] == weights[precision, "b", rev], (precision, rev)
    assert weights["fp32", "a", "step0"] == weights["bf16", "a", "step0"]  # the same initialisation
    assert weights["fp32", "a", "main"] != weights["bf16", "a", "main"]
    assert "precision" not in json.loads((tmp_path / "fp32" / "a" / "main" / "training_meta.json").read_text())
    # --weight-decay reaches AdamW (other weights from the same start) and is recorded when not 0.1
    subprocess.run([sys.executable, str(script), *args, "--precision", "fp32", "--weight-decay", "0.5", "--out",
                    str(tmp_path / "wd")], check=True, capture_output=True, timeout=300)
    assert (tmp_path / "wd" / "step0" / "model.safetensors").read_bytes() == weights["fp32", "a", "step0"]
    assert (tmp_path / "wd" / "main" / "model.safetensors").read_bytes() != weights["fp32", "a", "main"]
    assert json.loads((tmp_path / "wd" / "main" / "training_meta.json").read_text())["weight_decay"] == 0.5
    meta = json.loads((tmp_path / "bf16" / "a" / "main" / "training_meta.json").read_text())
    assert meta["precision"] == "bf16"  # recorded when not fp32, as v1-v8 were trained
    assert (meta["step"], meta["steps"], meta["mixture_from"], meta["revisions"]) == (15, 15, 12,
                                                                                      [0, 1, 2, 4, 8, 12, 15])
    assert meta["curriculum_learnt_at"] == [None, None, None]
    # the script's defaults are the shipped model's recipe (every setting this run did not override)
    shipped = embedded.training_meta("main")
    same = ("answer_tokens", "batch_tokens", "dropout", "early_extra", "early_mix", "early_until", "lm_weight", "lr",
            "mix", "precision", "seed", "smoothing", "smoothing_floor", "smoothing_width", "weight_decay",
            "weights")  # those with a default: recorded when set
    assert {k: meta.get(k) for k in same} == {k: shipped.get(k) for k in same}
    step2 = json.loads((tmp_path / "bf16" / "a" / "step2" / "training_meta.json").read_text())
    assert step2 == {**meta, "step": 2}


@pytest.mark.slow  # two short training runs in subprocesses (~15 s)
def test_training_curriculum_runs_its_stages_in_turn(tmp_path):
    """--early-mix with two ';'-separated stages: each stage ends at --early-max steps of its
    own (counted from where it started), the second stage's mix is what trains next, the
    mixture follows, and the meta records each stage's mix and outcome (stage 2 ends on
    binding_reverse_short's accuracy, which only its own mix produces). A stage count that
    --early-until does not match is refused before anything is written."""
    import subprocess
    import sys

    script = SCRIPTS / "train_embedded.py"
    stages = ["--early-mix", "binding_short=4,repeated_tokens=2;binding_reverse_short=4",
              "--early-until", "binding_short=0.9;binding_reverse_short=0.9"]
    args = ["--steps", "2", "--early-max", "3", "--every", "4", "--log-until", "4", "--width", "32", "--layers", "1", "--threads", "1",
            "--mix", "arithmetic=2"]
    done = subprocess.run([sys.executable, str(script), *args, *stages, "--out", str(tmp_path / "a")], check=True,
                          capture_output=True, text=True, timeout=300)
    ends = [json.loads(ln) for ln in done.stdout.splitlines() if ln.startswith('{"curriculum_learnt_at"')]
    assert ends == [{"curriculum_learnt_at": None, "stage": 1},
                    {"curriculum_learnt_at": None, "stage": 2, "mixture_from": 6}]
    first = [json.loads(ln) for ln in done.stdout.splitlines() if ln.startswith('{"step": 0,')]
    assert set(first[0]) == {"step", "s", "binding_short", "repeated_tokens"}  # step 0 trains stage 1's mix
    meta = json.loads((tmp_path / "a" / "main" / "training_meta.json").read_text())
    assert (meta["step"], meta["mixture_from"], meta["curriculum_learnt_at"]) == (8, 6, [None, None])
    assert meta["early_mix"] == [{"binding_short": 4, "repeated_tokens": 2}, {"binding_reverse_short": 4}]
    bad = subprocess.run([sys.executable, str(script), *args, "--early-mix", stages[1], "--early-until",
                          "binding_short=0.9", "--out", str(tmp_path / "b")], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "one TASK=ACC per stage" in bad.stderr
    assert not (tmp_path / "b").exists()


def test_linear_from_resolves_to_a_step():
    """--linear-from's first step: a fixed step as given; mixture+N the mixture's first step plus N,
    unknown (None: the bend does not train) while the curriculum runs."""
    script = _script("train_embedded")
    assert script.linear_first_step(script.linear_start("700"), None) == 700
    assert script.linear_first_step(script.linear_start("mixture+1600"), 1126) == 2726
    assert script.linear_first_step(script.linear_start("mixture"), None) is None
    assert not script.linear_on(script.linear_start("mixture"), 5000, None)
    assert [script.linear_on(script.linear_start("mixture+2"), s, 10) for s in (11, 12)] == [False, True]
    # --linear-until mixture+4: the bend's last step is the one before the mixture's first step plus 4
    window = (script.linear_start("mixture+2"), script.linear_start("mixture+4"))
    assert [script.linear_on(window[0], s, 10, window[1]) for s in (11, 12, 13, 14, 15)] == [False, True, True, False, False]
    # an end counted from the mixture is not reached while the curriculum runs (its step not known yet)
    assert script.linear_on(script.linear_start("3"), 4, None, script.linear_start("mixture+0"))
    # --linear-ramp 4: a quarter of the weight on the bend's first step, all of it from its fourth on
    assert [script.linear_weight(8.0, 4, since) for since in (0, 1, 3, 100)] == [2.0, 4.0, 8.0, 8.0]
    assert script.linear_weight(8.0, 0, 0) == 8.0


@pytest.mark.slow  # five short training runs and three refused ones, in subprocesses (~50 s alone)
def test_linear_from_trains_the_bend_only_from_its_step(tmp_path):
    """--linear-from mixture+1: the run is byte for byte the one without --linear-paths up to that
    step (no pair drawn, so the mixture draws what it draws without it) and another after it; the
    meta records the setting. --linear-from mixture --linear-until mixture+1 trains the bend at the
    mixture's first step only: to there it is the run with no end, after it another. Bad windows
    are refused (exit 2) before anything is written. --site-drop-from mixture+1 likewise: no mask is
    drawn before its step, so the run is the plain one to there."""
    import subprocess
    import sys

    script = SCRIPTS / "train_embedded.py"
    args = [sys.executable, str(script), "--steps", "2", "--early-max", "3", "--every", "1", "--log-until", "4",
            "--width", "32", "--layers", "1", "--threads", "1", "--mix", "arithmetic=2", "--early-mix",
            "binding_short=4;binding_reverse_short=4", "--early-until", "binding_short=0.9;binding_reverse_short=0.9"]
    late = ["--linear-paths", "1", "--linear-pairs", "2", "--linear-sites", "effect", "--linear-from", "mixture+1"]
    bend = ["--linear-paths", "1", "--linear-pairs", "2", "--linear-sites", "effect", "--linear-from", "mixture"]
    for out, extra in (("plain", []), ("late", late), ("open", bend), ("window", [*bend, "--linear-until", "mixture+1"]),
                       ("dropped", ["--site-drop", "0.25", "--site-drop-from", "mixture+1"])):
        subprocess.run([*args, *extra, "--out", str(tmp_path / out)], check=True, capture_output=True, timeout=300)
    meta = json.loads((tmp_path / "late" / "main" / "training_meta.json").read_text())
    assert (meta["mixture_from"], meta["step"], meta["linear_from"], meta["linear_from_step"]) == (6, 8, "mixture+1", 7)
    assert json.loads((tmp_path / "late" / "step1" / "training_meta.json").read_text()) == {**meta, "step": 1}
    assert "linear_from" not in json.loads((tmp_path / "plain" / "main" / "training_meta.json").read_text())

    def weights(out, rev):
        return (tmp_path / out / rev / "model.safetensors").read_bytes()

    for rev in ("step1", "step6", "step7"):  # step7 holds steps 0-6: the bend starts at step 7
        assert weights("late", rev) == weights("plain", rev), rev
    assert weights("late", "main") != weights("plain", "main")
    window = json.loads((tmp_path / "window" / "main" / "training_meta.json").read_text())
    assert (window["linear_from_step"], window["linear_until"], window["linear_until_step"]) == (6, "mixture+1", 7)
    assert weights("window", "step7") == weights("open", "step7") != weights("plain", "step7")  # both bent at step 6
    assert weights("window", "main") != weights("open", "main")  # only the open one bends at step 7
    dropped = json.loads((tmp_path / "dropped" / "main" / "training_meta.json").read_text())
    assert (dropped["site_drop"], dropped["site_drop_from"], dropped["site_drop_from_step"]) == (0.25, "mixture+1", 7)
    assert weights("dropped", "step7") == weights("plain", "step7") and weights("dropped", "main") != weights("plain", "main")
    for extra, says in ((["--linear-until", "mixture+1"], "it needs --linear-paths above 0"),
                        ([*bend, "--linear-until", "later"], "--linear-until 'later': give a step"),
                        ([*late, "--linear-until", "mixture+1"], "must come after --linear-from mixture+1")):
        out = subprocess.run([*args, *extra, "--out", str(tmp_path / "bad")], capture_output=True, text=True, timeout=300)
        assert out.returncode == 2 and says in out.stderr.strip().splitlines()[-1], out.stderr
        assert not (tmp_path / "bad").exists()


@pytest.mark.slow  # three short training runs, one of them killed twice (~60 s)
def test_training_killed_and_resumed_is_byte_identical(tmp_path):
    """train_embedded.py --checkpoint, killed (SIGKILL, a real process) in the curriculum and again
    in the mixture, then --resume'd each time: every revision's weights and meta, and the training
    log, equal an uninterrupted run's. --resume with other settings, or without a checkpoint, is a
    one-line error (exit 2) that writes nothing."""
    import subprocess
    import sys
    import time

    import torch

    script = SCRIPTS / "train_embedded.py"
    args = [sys.executable, str(script), "--steps", "6", "--early-max", "2", "--every", "4", "--log-until", "4", "--width", "32",
            "--layers", "1", "--threads", "1", "--checkpoint-every", "2", "--early-mix",
            "binding_short=160,repeated_tokens=64;binding_reverse_short=96", "--early-until",
            "binding_short=0.9;binding_reverse_short=0.9"]  # two stages of 2 steps: the mixture runs from step 4
    subprocess.run([*args, "--out", str(tmp_path / "a"), "--checkpoint", str(tmp_path / "a.pt")], check=True,
                   capture_output=True, timeout=300)
    ckpt = tmp_path / "b.pt"
    run_b = [*args, "--out", str(tmp_path / "b"), "--checkpoint", str(ckpt)]
    killed_at = []
    for extra in ([], ["--resume"]):  # killed at the first checkpoint it writes, twice
        proc = subprocess.Popen([*run_b, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        last = killed_at[-1] if killed_at else 0
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if ckpt.exists() and torch.load(ckpt, weights_only=False)["step"] > last:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.kill()
        proc.wait()
        killed_at.append(torch.load(ckpt, weights_only=False)["step"])
    assert killed_at[0] < 4 <= killed_at[1]  # once in the curriculum (mixture from step 4), once in the mixture
    done = subprocess.run([*run_b, "--resume"], check=True, capture_output=True, text=True, timeout=300)
    assert json.loads(done.stdout.splitlines()[0]) == {"resumed_at": killed_at[1]}
    revs = sorted(p.name for p in (tmp_path / "a").iterdir() if p.is_dir())
    assert revs == sorted(p.name for p in (tmp_path / "b").iterdir() if p.is_dir())
    assert revs == ["main", "step0", "step1", "step2", "step4", "step8"]
    for rev in revs:
        for name in ("model.safetensors", "training_meta.json"):
            assert (tmp_path / "a" / rev / name).read_bytes() == (tmp_path / "b" / rev / name).read_bytes(), rev

    def losses(run):  # the log without its wall-clock times
        rows = json.loads((tmp_path / run / "training_log.json").read_text())
        return [{k: v for k, v in row.items() if k != "s"} for row in rows]

    assert losses("a") == losses("b")
    before = {p: p.read_bytes() for p in [ckpt, *(tmp_path / "b").rglob("*")] if p.is_file()}
    for bad, says in ((["--resume", "--lr", "0.001"], "other settings (lr)"),
                      (["--resume", "--checkpoint", str(tmp_path / "none.pt")], "--resume needs --checkpoint")):
        out = subprocess.run([*run_b, *bad], capture_output=True, text=True, timeout=300)
        assert out.returncode == 2 and says in out.stderr.strip().splitlines()[-1], out.stderr
    assert {p: p.read_bytes() for p in [ckpt, *(tmp_path / "b").rglob("*")] if p.is_file()} == before
    # a checkpoint from before --precision and --smoothing-width existed was trained in fp32 with even
    # smoothing, not in today's defaults (bf16, width 4)
    state = torch.load(ckpt, weights_only=False)
    del state["settings"]["precision"], state["settings"]["smoothing_width"]
    torch.save(state, tmp_path / "old.pt")
    old = [*args, "--out", str(tmp_path / "b"), "--checkpoint", str(tmp_path / "old.pt"), "--resume"]  # b's own --out
    out = subprocess.run(old, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "other settings (precision, smoothing_width)" in out.stderr, out.stderr
    out = subprocess.run([*old, "--precision", "fp32", "--smoothing-width", "0", "--lr", "0.001"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2 and "other settings (lr)" in out.stderr, out.stderr  # precision and width agree
    assert {p: p.read_bytes() for p in [ckpt, *(tmp_path / "b").rglob("*")] if p.is_file()} == before


LINEAR_PATHS_ERROR = "--linear-paths must be 0 (off) or a positive weight, and --linear-pairs a positive count"


@pytest.mark.parametrize("bad, says", [
    (["--every", "0"], "--every must be a positive step count"),
    (["--log-until", "500"], "--log-until must be a power of two (Pythia's revisions stop at 512)"),
    (["--weight-decay", "-0.1"], "--weight-decay and --smoothing-width must be 0 or more"),
    (["--smoothing-width", "-2"], "--weight-decay and --smoothing-width must be 0 or more"),
    (["--smoothing-width", "0", "--smoothing-floor", "0.5"],
     "--smoothing-floor is a share from 0 to 1 and needs a --smoothing-width above 0"),
    (["--smoothing-width", "2", "--smoothing-floor", "1.5"],
     "--smoothing-floor is a share from 0 to 1 and needs a --smoothing-width above 0"),
    (["--site-drop", "1"], "--site-drop is a probability from 0 to below 1"),
    (["--site-drop", "-0.1"], "--site-drop is a probability from 0 to below 1"),
    (["--site-drop-from", "mixture"], "--site-drop-from starts --site-drop: it needs --site-drop above 0"),
    (["--site-drop", "0.1", "--site-drop-from", "mixture+x"],
     "--site-drop-from 'mixture+x': give a step (0 or more), 'mixture' or 'mixture+N'"),
    (["--linear-paths", "-1"], LINEAR_PATHS_ERROR),
    (["--linear-paths", "1", "--linear-pairs", "0"], LINEAR_PATHS_ERROR),
    (["--linear-sites", "effect"], "--linear-sites chooses --linear-paths' sites: it needs --linear-paths above 0"),
    (["--linear-from", "mixture"], "--linear-from starts --linear-paths: it needs --linear-paths above 0"),
    (["--linear-paths", "1", "--linear-from", "mixture+-5"],
     "--linear-from 'mixture+-5': give a step (0 or more), 'mixture' or 'mixture+N'"),
    (["--linear-paths", "1", "--linear-from", "-3"],
     "--linear-from '-3': give a step (0 or more), 'mixture' or 'mixture+N'"),
])
def test_training_script_refuses_bad_settings_before_writing(bad, says, tmp_path, monkeypatch, capsys):
    """A setting the schedule or the optimiser cannot use is an argparse error (exit 2, one line
    saying which) before the output folder is made."""
    script = _script("train_embedded")
    monkeypatch.setattr(sys, "argv", ["train_embedded.py", *bad, "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as stop:
        script.main()
    assert stop.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1].endswith(says)
    assert not (tmp_path / "out").exists()


def test_smoothing_spreads_within_the_class_evenly_or_by_numeric_distance():
    """The label-smoothing targets: every row a distribution; with no width (v10's recipe) an answer's
    share is even over its class (100 numbers, 100 number words, the names) and a non-answer token is
    not smoothed; --smoothing-width w spreads a number's share as exp(-|n - m| / w), normalised
    over the class (numpy here), in both number classes, and leaves names even; --smoothing-floor f
    keeps f of it even over the class."""
    script = _script("train_embedded")
    tok = script.build_tokenizer()
    even, near = script.smoothing_classes(tok).numpy(), script.smoothing_classes(tok, 2.0).numpy()
    floored = script.smoothing_classes(tok, 2.0, 0.25).numpy()
    np.testing.assert_allclose(even.sum(-1), 1, atol=1e-6)
    np.testing.assert_allclose(near.sum(-1), 1, atol=1e-6)
    np.testing.assert_allclose(floored.sum(-1), 1, atol=1e-6)
    arabic = tok.convert_tokens_to_ids([str(i) for i in range(100)])
    words = tok.convert_tokens_to_ids([script.A.number_word(i) for i in range(100)])
    names = tok.convert_tokens_to_ids(list(script.W.NAMES))
    n = np.arange(100)
    expect = np.exp(-np.abs(n[:, None] - n[None, :]) / 2.0)
    expect /= expect.sum(-1, keepdims=True)
    for ids in (arabic, words):
        np.testing.assert_allclose(even[np.ix_(ids, ids)], 1 / 100, atol=1e-7)
        np.testing.assert_allclose(near[np.ix_(ids, ids)], expect, atol=1e-6)
        np.testing.assert_allclose(floored[np.ix_(ids, ids)], 0.75 * expect + 0.25 / 100, atol=1e-6)
    np.testing.assert_allclose(near[np.ix_(names, names)], 1 / len(names), atol=1e-7)
    other = tok.convert_tokens_to_ids("=")
    assert even[other, other] == near[other, other] == 1 and even[other].sum() == 1


def test_training_sequences_answer_what_their_context_states():
    """The training tasks the next embedded model needs (scripts/train_embedded.py's trial),
    re-derived from each sequence's own text: a reversed binding query is answered by the
    entity stated before the queried city; the repository-format list by its second smallest
    number; a word problem by its worked solution, whose every equation holds and whose stated
    result is its last equation's. Every word is in the vocabulary."""
    import random
    import re

    script = _script("train_embedded")
    tok, rng = script.build_tokenizer(), random.Random(0)
    for _ in range(200):
        segments = script.binding_reverse(rng)
        context = segments[0][0].split(" Which ")[0]
        said = {s.split()[-1]: s.split()[0] for s in context.rstrip(" .").split(" . ")}  # city -> the person stating it
        for text, answer in segments:
            assert said[text.rstrip(" ?").split()[-1]] == answer, segments
        script.encode(tok, segments)  # raises on an out-of-vocabulary word
        [(text, answer)] = script.kth_repository(rng)
        numbers = [int(x) for x in text.split()]
        assert len(numbers) == 16 and int(answer) == sorted(numbers)[1]
        [(question, solution)] = script.cot_solution(rng)
        assert question.endswith("A :")
        equations = re.findall(r"(\d+) ([+-]) (\d+) = (\d+)", solution)
        for a, op, b, c in equations:
            assert int(c) == (int(a) + int(b) if op == "+" else int(a) - int(b)), solution
        assert solution.endswith(f"The result is {equations[-1][3]} ."), solution
        script.encode(tok, [(question, solution)])


def test_the_shapes_task_is_the_attribute_first_family_alone():
    """``shapes`` (train_embedded's task for a curriculum stage that ends on that family): every
    sequence is a context of "The <shape> is <colour> ." statements whose every query, "Which
    shape is colored <colour> ?", is answered by the shape stated with that colour."""
    import random
    import re

    script = _script("train_embedded")
    tok, rng = script.build_tokenizer(), random.Random(1)
    for _ in range(200):
        segments = script.TASKS["shapes"](rng)
        context = segments[0][0].split(" Question : ")[0]
        shape_of = {colour: shape for shape, colour in re.findall(r"The (\w+) is (\w+) \.", context)}
        assert 2 <= len(shape_of) <= 4 and context.count(" . ") + context.endswith(" .") == len(shape_of), context
        for text, answer in segments:
            [colour] = re.findall(r"Which shape is colored (\w+) \?", text)
            assert shape_of[colour] == answer, segments
        script.encode(tok, segments)  # raises on an out-of-vocabulary word


def _small_training_batch(**config):
    """train_embedded's script, tokenizer, 28 training sequences (24 binding, 4 worked solutions; seed
    0), a 2-layer d=32 GPT-NeoX initialised from seed 0 (``config`` added to its config) and the
    label-smoothing table: the small model the chunking and precision tests compute losses on."""
    import random

    script = _script("train_embedded")
    tok, rng = script.build_tokenizer(), random.Random(0)
    seqs = [script.encode(tok, script.TASKS[t](rng), True) for t in ("binding",) * 24 + ("cot_formats",) * 4]
    torch.manual_seed(0)
    model = script.GPTNeoXForCausalLM(script.GPTNeoXConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=512, rotary_pct=0.25, **config)).float()
    return script, tok, seqs, model, script.smoothing_classes(tok)


def test_site_drop_zeroes_whole_sites_while_training_and_nothing_in_eval():
    """train_embedded's ``--site-drop p``: in training mode each attention and MLP output at each
    (sequence, position) is either zeroed whole or kept and scaled by 1 / (1 - p), about p of them
    zeroed; in eval mode (every measurement) the model computes what it computed without it."""
    script, tok, seqs, model, _ = _small_training_batch()
    ids = torch.tensor([list(s[0][:12]) for s in seqs])  # 28 sequences x 12 tokens

    def outputs() -> dict[str, torch.Tensor]:
        """Layer 0's attention and MLP outputs as the residual stream receives them (hooks run in
        the order registered, so these see the drop); layer 0's input is the embeddings, which a
        drop never changes, so a kept site must equal its plain value."""
        seen = {}
        hooks = [m.register_forward_hook(lambda mod, a, out, name=name: seen.__setitem__(
            name, out[0] if isinstance(out, tuple) else out)) for name, m in
            (("attn", model.gpt_neox.layers[0].attention), ("mlp", model.gpt_neox.layers[0].mlp))]
        with torch.no_grad():
            logits = model(ids).logits
        for h in hooks:
            h.remove()
        return {**seen, "logits": logits}

    model.eval()
    plain = outputs()
    switch = script.add_site_drop(model, 0.25)
    torch.testing.assert_close(outputs()["logits"], plain["logits"], rtol=0, atol=0)  # eval: untouched
    model.train()
    # switched off (before --site-drop-from): the plain model, and no mask drawn from torch's generator
    switch["on"] = False
    torch.manual_seed(1)
    before = torch.get_rng_state()
    off = outputs()
    assert torch.equal(torch.get_rng_state(), before)
    torch.testing.assert_close(off["logits"], plain["logits"], rtol=0, atol=0)  # training mode, no dropout
    switch["on"] = True
    torch.manual_seed(1)
    dropped = outputs()
    shares = []
    for site in ("attn", "mlp"):
        zero = (dropped[site] == 0).all(-1)  # (sequence, position)
        shares.append(float(zero.float().mean()))
        torch.testing.assert_close(dropped[site][~zero], plain[site][~zero] / 0.75)
    assert all(0.15 < share < 0.35 for share in shares), shares  # 336 draws each at p = 0.25


def _one_prompt_run(model, ids: list[int], module, edit=None):
    """One prompt through ``model`` with a plain forward hook on ``module``: the last position's
    logits and the module's output, with ``edit(output)`` written into it when given."""
    seen = {}

    def hook(mod, args, out):
        o = out[0] if isinstance(out, tuple) else out
        if edit is not None:
            o = edit(o.clone())
        seen["out"] = o
        return (o, *out[1:]) if isinstance(out, tuple) else o

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1]
    finally:
        handle.remove()
    return logits, seen["out"]


def test_linear_paths_trial_measures_the_patch_path_plain_hooks_measure():
    """train_embedded's ``--linear-paths`` trial: for each arithmetic pair, the logit difference of the
    base prompt with one site's output moved a share t of the way to the source prompt's, at t = 0, 1
    and the drawn t, equals a one-prompt-at-a-time run with a plain hook that writes (1 - t)·base +
    t·source into that output at that position; and the loss is its bend, from those numbers."""
    import random

    script, tok, _, model, _ = _small_training_batch()
    with torch.no_grad():  # larger weights: a random model's paths bend measurably
        for p in model.parameters():
            p.mul_(4)
    model.eval()
    rng = random.Random(3)
    pairs = script.arithmetic_pairs(rng, tok, 6)
    for base, source, a_base, a_source in pairs:
        assert len(base) == len(source) and base != source and a_base != a_source
        assert base[0] == source[0] == tok.bos_token_id
    state = rng.getstate()
    draws = random.Random()
    draws.setstate(state)
    with torch.no_grad():
        f0, f1, ft, t = script.patch_paths(model, pairs, rng, tok.pad_token_id)
    modules = [m for layer in model.gpt_neox.layers for m in (layer.attention, layer.mlp)]
    run = functools.partial(_one_prompt_run, model)
    expect = []
    for i, (base, source, a_base, a_source) in enumerate(pairs):
        first = next(j for j, (x, y) in enumerate(zip(base, source)) if x != y)
        k, p, share = draws.randrange(len(modules)), draws.randint(first, len(base) - 1), draws.random()
        assert float(t[i]) == pytest.approx(share)
        _, base_out = run(base, modules[k])
        _, source_out = run(source, modules[k])
        row = []
        for s in (0.0, 1.0, share):
            def edit(o, s=s, p=p):
                o[0, p] = (1 - s) * base_out[0, p] + s * source_out[0, p]
                return o
            logits, _ = run(base, modules[k], edit)
            row.append(float(logits[a_source] - logits[a_base]))
        expect.append(row)
    expect = np.array(expect)
    got = torch.stack([f0, f1, ft], 1).numpy()
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-4)
    assert np.abs(expect[:, 1] - expect[:, 0]).max() > 0.1  # the patches move the answer: a real check
    effect = expect[:, 1] - expect[:, 0]
    bend = np.mean((expect[:, 2] - expect[:, 0] - t.numpy() * effect) ** 2 / (1 + effect ** 2))
    same = random.Random()
    same.setstate(state)
    with torch.no_grad():
        loss = script.path_linearity_loss(model, pairs, same, tok.pad_token_id)
    assert float(loss) == pytest.approx(bend, rel=1e-3)
    same.setstate(state)
    raw = (expect[:, 2] - expect[:, 0] - t.numpy() * effect) ** 2
    with torch.no_grad():  # --linear-scale nats: the bend itself, not over 1 + effect^2
        loss = script.path_linearity_loss(model, pairs, same, tok.pad_token_id, scale="nats")
    assert float(loss) == pytest.approx(np.mean(raw), rel=1e-3)
    # relative and invariant have one value and differ in the gradient. Every f is linear in the
    # unembedding (no bias, untied), so scaling it by c scales f by c: the term is mean(b c^2 / (1 +
    # e^2 c^2)) with e^2 detached (relative) or not (invariant), whose derivative in c at c = 1 is
    # mean(2 b / (1 + e^2)) or mean(2 b / (1 + e^2)^2), and equals sum(W * dL/dW) for W the unembedding.
    head = model.get_output_embeddings().weight
    assert model.get_output_embeddings().bias is None and head.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    for scale, want in (("relative", np.mean(2 * raw / (1 + effect ** 2))),
                        ("invariant", np.mean(2 * raw / (1 + effect ** 2) ** 2))):
        same.setstate(state)
        model.zero_grad()
        loss = script.path_linearity_loss(model, pairs, same, tok.pad_token_id, scale=scale)
        assert float(loss.detach()) == pytest.approx(bend, rel=1e-3)
        loss.backward()
        assert float((head.detach() * head.grad).sum()) == pytest.approx(want, rel=1e-3), scale
    assert np.mean(2 * raw / (1 + effect ** 2) ** 2) < 0.9 * np.mean(2 * raw / (1 + effect ** 2))  # they differ here


def test_linear_sites_effect_draws_each_pair_s_site_by_its_exact_patching_effect():
    """train_embedded's ``--linear-sites effect``: ``site_effects`` gives, for each pair, f(1) - f(0) of
    patching every attention and MLP output at every position from the first the prompts differ at to
    the last (the source prompt's output written in whole), as one-prompt runs with plain hooks give
    it; and ``patch_paths`` draws each pair's cell in proportion to those |effects| (then t), so a
    replay of the same rng over the plain-hook effects draws the same cells and shares."""
    import random

    script, tok, _, model, _ = _small_training_batch()
    with torch.no_grad():  # larger weights, as above: effects well away from zero
        for p in model.parameters():
            p.mul_(4)
    model.eval()
    pairs = script.arithmetic_pairs(random.Random(5), tok, 5)
    modules = [m for layer in model.gpt_neox.layers for m in (layer.attention, layer.mlp)]
    run = functools.partial(_one_prompt_run, model)
    expect, spans = [], []
    for base, source, a_base, a_source in pairs:
        first = next(j for j, (x, y) in enumerate(zip(base, source)) if x != y)
        spans.append(range(first, len(base)))
        clean, _ = run(base, modules[0])
        row = []
        for module in modules:
            _, source_out = run(source, module)
            for p in spans[-1]:
                def edit(o, p=p, source_out=source_out):
                    o[0, p] = source_out[0, p]
                    return o
                logits, _ = run(base, module, edit)
                row.append(float(logits[a_source] - logits[a_base] - clean[a_source] + clean[a_base]))
        expect.append(np.array(row))
    rng = random.Random(11)
    state = rng.getstate()
    with torch.no_grad():
        f0, f1, ft, t = script.patch_paths(model, pairs, rng, tok.pad_token_id, by_effect=True)
    replay = random.Random()
    replay.setstate(state)
    for i, (span, row) in enumerate(zip(spans, expect)):
        assert np.abs(row).max() > 0.1  # the cells differ: the weights are a real choice
        cell = replay.choices(range(len(row)), weights=np.abs(row).tolist())[0]
        assert float(t[i]) == pytest.approx(replay.random())
        # the drawn cell's full patch is the sweep's value for it
        assert float(f1[i] - f0[i]) == pytest.approx(row[cell], rel=1e-4, abs=1e-4)
    # the sweep itself, every cell, through the helper patch_paths calls
    ids = torch.full((len(pairs), max(len(p[0]) for p in pairs)), tok.pad_token_id)
    both = torch.full((2 * len(pairs), ids.shape[1]), tok.pad_token_id)
    for i, (base, source, _, _) in enumerate(pairs):
        ids[i, : len(base)] = both[i, : len(base)] = torch.tensor(base)
        both[len(pairs) + i, : len(source)] = torch.tensor(source)
    acts = {}
    hooks = [m.register_forward_hook(lambda mod, a, out, k=k: acts.__setitem__(k, out[0] if isinstance(out, tuple)
                                                                               else out)) for k, m in enumerate(modules)]
    with torch.no_grad():
        logits = model(both).logits
    for h in hooks:
        h.remove()
    last = torch.tensor([len(p[0]) - 1 for p in pairs])
    answers = torch.tensor([[p[2], p[3]] for p in pairs])
    at = logits[torch.arange(len(pairs)), last]
    clean = at[torch.arange(len(pairs)), answers[:, 1]] - at[torch.arange(len(pairs)), answers[:, 0]]
    got = script.site_effects(model, modules, ids, acts, spans, last, answers, clean, rows_per_forward=7)
    for g, e in zip(got, expect):
        np.testing.assert_allclose(g.numpy(), e, rtol=1e-4, atol=1e-4)


def test_token_budget_chunks_change_only_the_summation_order():
    """train_embedded's ``--batch-tokens``: a task's sequences split into length-sorted chunks of at
    most that many tokens (padding included; a longer sequence alone) give the task's loss and
    every gradient of the 128-sequence chunks (``0``, v1-v7) up to float32 rounding: the chunk
    losses share fixed normalisers, and causal attention never lets a token see the padding after
    it. Every sequence is kept, unchanged, in exactly one chunk."""
    script, tok, seqs, model, smooth = _small_training_batch()

    def unpadded(chunks):
        return sorted(tuple(ids[i][: int((ids[i] != tok.pad_token_id).sum())].tolist())
                      for ids, _, _ in chunks for i in range(len(ids)))

    def loss_and_grads(chunks):
        model.zero_grad()
        total = 0.0
        for loss, _ in script.chunk_losses(model, chunks, smooth, 0.2, 0.1):
            loss.backward()
            total += float(loss.detach())
        return total, [p.grad.clone() for p in model.parameters()]

    whole = list(script.batches(seqs, tok.pad_token_id, 0))
    split = list(script.batches(seqs, tok.pad_token_id, 256))
    assert len(whole) == 1 and len(split) > 3
    assert all(ids.numel() <= 256 or len(ids) == 1 for ids, _, _ in split)
    assert sum(ids.numel() for ids, _, _ in split) < whole[0][0].numel()  # less padding
    assert unpadded(split) == unpadded(whole) == sorted(tuple(s) for s, _ in seqs)
    (l0, g0), (l1, g1) = loss_and_grads(whole), loss_and_grads(split)
    assert l1 == pytest.approx(l0, rel=1e-6)
    scale = max(float(g.abs().max()) for g in g0)  # reordered float32 sums differ by a few ulps of it
    for a, b in zip(g0, g1):
        torch.testing.assert_close(b, a, rtol=0, atol=32 * np.finfo(np.float32).eps * scale)


def test_bf16_forward_is_the_fp32_loss_to_bfloat16_rounding():
    """train_embedded's ``--precision bf16``: ``chunk_losses(..., "bf16")`` runs the matrix products in
    bfloat16 (the unembedding's logits are bf16) while the parameters and their gradients stay float32;
    the loss is float32 arithmetic on those bf16 logits (a float64 recomputation of the script's loss
    from them agrees to float32 rounding), and the whole gradient is fp32's up to bfloat16 rounding:
    its relative error stays within a few units of bf16's roundoff u = 2**-8 (measured 3.2e-3 here),
    where leaving one sequence out moves it by 0.33. ``fp32`` changes nothing (v1-v8's bits)."""
    script, tok, seqs, model, smooth = _small_training_batch(attn_implementation="eager")
    logits = []
    model.get_output_embeddings().register_forward_hook(lambda m, i, o: logits.append(o.detach()))

    def loss_and_grad(precision, sequences=seqs):
        chunks = list(script.batches(sequences, tok.pad_token_id, 0))
        model.zero_grad()
        total = 0.0
        for loss, _ in script.chunk_losses(model, chunks, smooth, 0.2, 0.1, precision):
            loss.backward()
            total += float(loss.detach())
        assert all(p.grad.dtype == torch.float32 for p in model.parameters())
        return total, torch.cat([p.grad.flatten() for p in model.parameters()]), chunks

    (l0, g0, chunks), (l1, g1, _) = loss_and_grad("fp32"), loss_and_grad("bf16")
    assert len(chunks) == 1 and [x.dtype for x in logits] == [torch.float32, torch.bfloat16]
    # the loss from the bf16 logits, in float64: label smoothing 0.2 within the answer's class, 0.1 x prompt NLL
    ids, is_answer, is_prompt = chunks[0]
    logp = logits[1].double()[:, :-1].log_softmax(-1)
    target, at = ids[:, 1:], is_answer.bool()
    nll = -logp.gather(-1, target[..., None])[..., 0]
    spread = -(logp[at] * smooth[target[at]].double()).sum(-1)
    expected = (0.8 * nll[at] + 0.2 * spread).sum() / is_answer.sum() + 0.1 * (nll * is_prompt).sum() / is_prompt.sum()
    assert l1 != l0 and l1 == pytest.approx(float(expected), rel=1e-6)  # float32 sums of ~10^3 terms
    u = 2.0 ** -8
    relative = float((g1 - g0).norm() / g0.norm())
    _, g_fewer, _ = loss_and_grad("fp32", seqs[:-1])
    assert 0 < relative < 4 * u < float((g_fewer - g0).norm() / g0.norm())


def _running_totals(question: str) -> list[int]:
    """The owner's count after each sentence of a synthetic word problem, read from its words:
    "O had x t . P gave O n t . O gave Q m t . What is the result ?" -> [x, x + n, x + n - m]."""
    sentences = question.split(" . ")[:-1]
    owner, totals = sentences[0].split()[0], [int(sentences[0].split()[2])]
    for s in sentences[1:]:
        giver, _, taker, n = s.split()[:4]
        totals.append(totals[-1] + int(n) if taker == owner else totals[-1] - int(n))
        assert owner in (giver, taker), question
    return totals


def test_format_following_solutions_target_words_and_equations_not_stated_results():
    """cot_formats (the v5 mixture): the query's solution is in its exemplars' format; in full
    and equation-only every solution token is a target and every equation holds; in text-only
    and no-CoT the words are targets and exactly the stated numbers are not, and those numbers
    are the owner's running totals re-derived from the question's words."""
    import random
    import re

    script = _script("train_embedded")
    tok, rng = script.build_tokenizer(), random.Random(0)

    def variant(solution: str) -> str:
        if "=" in solution:
            return "full" if " gave " in solution else "equation_only"
        return "text_only" if " had " in solution else "no_cot"

    seen = set()
    for _ in range(300):
        segments = script.cot_formats(rng)
        text = " ".join(f"{t} {a}" for t, a in segments)
        *exemplars, query = text.split("Q : ")[1:]
        question, solution = query.split(" A : ")
        v = variant(solution)
        seen.add(v)
        assert all(variant(e.split(" A : ")[1]) == v for e in exemplars), text
        assert exemplars or v in ("full", "equation_only"), text  # a bare question says no format
        totals = _running_totals(question)
        assert solution.endswith(f"The result is {totals[-1]} ."), text
        ids, at = script.encode(tok, segments, all_tokens=True)
        start = len(tok(text.rsplit(" A : ", 1)[0] + " A :")["input_ids"])  # the solution's first token
        untrained = [tok.convert_ids_to_tokens(ids[i]) for i in range(start, len(ids)) if i not in set(at)]
        if v in ("full", "equation_only"):
            assert untrained == [], text
            for a, op, b, c in re.findall(r"(\d+) ([+-]) (\d+) = (\d+)", solution):
                assert int(c) == (int(a) + int(b) if op == "+" else int(a) - int(b)), text
        else:
            stated = [int(n) for n in re.findall(r"had (\d+)", solution)] + [totals[-1]]
            assert [int(t) for t in untrained] == stated, text
            assert stated[:-1] == (totals[1:] if v == "text_only" else []), text
    assert seen == {"full", "equation_only", "text_only", "no_cot"}
