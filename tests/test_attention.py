"""Reasoning-tree tasks, attention patterns, head entropy, mass per step and per-head patching,
checked against plain PyTorch (``output_attentions`` / forward hooks, no nnsight)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import nnsight_reasoning as nr
from nnsight_reasoning import embedded
from nnsight_reasoning.errors import UsageError
from nnsight_reasoning.tasks import ReasoningPrompts, TaskError

from .reference import reference_patch
from .test_patching import _compare, _logit_scale

DATA = Path(__file__).parent / "data"


def _numbers(text: str) -> list[int]:
    return [int(x) for x in text.split(":")[1].split(".")[0].split()]


# --------------------------------------------------------------------------- tasks
@pytest.mark.parametrize("k,length", [(1, 4), (2, 5), (3, 6)])
def test_kth_labels_follow_the_reasoning_tree(k, length):
    prompts = nr.tasks.kth_smallest(50, length=length, k=k, seed=3)
    for p in prompts:
        nums = _numbers(p.text)
        assert [s.text for s in p.statements] == [str(x) for x in nums] and len(set(nums)) == length
        answer = sorted(nums)[k - 1]
        assert p.answer == str(answer) and p.text.endswith("smallest is")
        for x, s in zip(nums, p.statements):
            assert s.useful == (x <= answer)
            assert s.step == (0 if x > answer else (2 if k > 1 else 1) if x == answer else 1)
        assert [p.text[a:b] for a, b in p.spans()] == [str(x) for x in nums]
    again = nr.tasks.kth_smallest(50, length=length, k=k, seed=3)
    assert again.prompts == prompts.prompts and nr.tasks.kth_smallest(50, length=length, k=k, seed=4) != prompts
    # evaluation prompts are the same texts the embedded model was scored on
    ex = nr.tasks.kth_smallest_examples(50, seed=3, length=length, k=k)
    assert [e.prompt for e in ex] == [p.text for p in prompts]


def test_kth_corruptions_keep_answers_and_labels_right():
    clean = nr.tasks.kth_smallest(40, seed=1)
    shuffled = nr.tasks.kth_smallest(40, corrupt="shuffle", seed=1)
    dropped = nr.tasks.kth_smallest(40, corrupt="drop", n_corrupt=2, seed=1)
    perturbed = nr.tasks.kth_smallest(40, corrupt="perturb", n_corrupt=2, seed=1)
    assert any(a.text != b.text for a, b in zip(clean, shuffled))
    for c, s, d, p in zip(clean, shuffled, dropped, perturbed):
        assert sorted(_numbers(s.text)) == sorted(_numbers(c.text)) and s.answer == c.answer
        assert set(s.statements) == set(c.statements)  # labels travel with their numbers
        nd = _numbers(d.text)
        assert len(nd) == 3 and set(nd) < set(_numbers(c.text)) and d.answer == c.answer
        assert not any(st.useful for st in set(c.statements) - set(d.statements))
        npert = _numbers(p.text)
        assert len(set(npert) - set(_numbers(c.text))) == 2 and p.answer == str(sorted(npert)[1])
        assert [st.useful for st in p.statements] == [x <= sorted(npert)[1] for x in npert]
    for bad, msg in [(dict(corrupt="twist"), "corrupt must be one of"),
                     (dict(corrupt="drop", n_corrupt=4), "fewer than k"),
                     (dict(k=7, length=8), "k must be")]:
        with pytest.raises(TaskError, match=msg):
            nr.tasks.kth_smallest(5, **bad)


def test_kth_pairs_differ_only_in_the_answer_number(embedded_tokenizer):
    pairs = nr.tasks.kth_smallest_pairs(30, seed=2)
    for p in pairs:
        b, s = _numbers(p.base), _numbers(p.source)
        diff = [i for i in range(5) if b[i] != s[i]]
        assert len(diff) == 1 and b[diff[0]] == int(p.base_answer) and s[diff[0]] == int(p.source_answer)
        assert sorted(b).index(int(p.base_answer)) == sorted(s).index(int(p.source_answer)) == 1
        assert len(embedded_tokenizer(p.base)["input_ids"]) == len(embedded_tokenizer(p.source)["input_ids"])


def test_reasoning_files_load_with_labels_and_fail_clearly(tmp_path):
    pw = nr.tasks.load_reasoning(DATA / "proofwriter.jsonl")
    assert len(pw) == 4 and pw.labelled and pw.n_steps == 3
    rows = [json.loads(line) for line in (DATA / "proofwriter.jsonl").read_text().splitlines()]
    for p, row in zip(pw, rows):
        assert [s.text for s in p.statements] == row["statements"] and p.answer == row["answer"]
        assert [s.step for s in p.statements] == row["steps"] and [int(s.useful) for s in p.statements] == row["useful"]
        assert p.text.endswith(f"Question : {row['question']} Answer :")
    csv = nr.tasks.load_reasoning(DATA / "proofwriter.csv")  # no useful column: useful = step > 0
    assert [(s.useful, s.step) for s in csv[0].statements] == [(True, 1), (True, 2), (False, 0)]
    arc = nr.tasks.load_reasoning(DATA / "arc.jsonl", "arc")
    assert "A ) sand B ) sunlight C ) wind Answer :" in arc[0].text and arc[0].answer == "B"
    assert [s.step for s in arc[0].statements] == [1, 0, 1]  # no steps column: useful = step 1
    assert not nr.tasks.load_reasoning(DATA / "unlabelled.jsonl").labelled
    dropped = nr.tasks.load_reasoning(DATA / "proofwriter.jsonl", corrupt="drop", seed=0)
    for p, d in zip(pw, dropped):
        gone = set(p.statements) - set(d.statements)
        assert len(d.statements) == 3 and len(gone) == 1 and not any(s.useful for s in gone)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"statements": ["a"], "answer": "x"}\n')
    for call, msg in [(lambda: nr.tasks.load_reasoning(bad), "lacks column"),
                      (lambda: nr.tasks.load_reasoning(tmp_path / "none.jsonl"), "no such data file"),
                      (lambda: nr.tasks.load_reasoning(DATA / "arc.jsonl", "arc", corrupt="perturb"), "perturb"),
                      (lambda: nr.tasks.load_reasoning(), "path=FILE")]:
        with pytest.raises(TaskError, match=msg):
            call()
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"statements": ["a", "b"], "question": "q", "answer": "x", "steps": [1, 0], "useful": [0, 0]}\n')
    with pytest.raises(TaskError, match="useful statements have step >= 1"):
        nr.tasks.load_reasoning(broken)


def _repository_labels(nums, task_name):
    """MechanisticProbe's label_generator (src/stask/probe.py:22-66, depth labels) restated:
    each number's rank is the sorted index of its value's first occurrence; ranks 0..task_name
    mark (column 0) the first number holding that rank, or the nearest lower rank a repeat left;
    the answer (task_name) likewise in column 1."""
    label_idx = [sorted(nums).index(x) for x in nums]
    labels = [[0, 0] for _ in nums]

    def holder(i):
        while i not in label_idx:
            i -= 1
        return label_idx.index(i)
    for i in range(task_name + 1):
        labels[holder(i)][0] = 1
    labels[holder(task_name)][1] = 1
    return labels


def test_kth_smallest_in_the_repositorys_format():
    """MechanisticProbe's own format: the numbers alone, drawn with repeats, k not stated; labels
    as the repository's: only a value's first copy, so with repeats fewer than k are useful."""
    ds = nr.tasks.kth_smallest(200, length=16, k=2, max_n=20, style="repository", seed=5)
    assert ds.params["style"] == "repository" and ds.n_steps == 2
    repeats = short = 0
    for p in ds:
        nums = [int(s.text) for s in p.statements]
        assert p.text == " ".join(map(str, nums)) and len(nums) == 16
        assert p.answer == str(sorted(nums)[1])
        repeats += len(set(nums)) < 16
        # useful: any label; step: 2 for the answer's column, 1 for a leaf (the depth probe's labels)
        want = [(bool(a or b), 2 if b else int(a)) for a, b in _repository_labels(nums, 1)]
        assert [(s.useful, s.step) for s in p.statements] == want, nums
        short += sum(s.useful for s in p.statements) < 2
    assert repeats > 100  # drawn with repeats, as the repository
    assert short > 0  # the two smallest equal: one labelled statement (the repository's first copy)
    p = nr.tasks.kth_smallest(1, length=6, k=3, style="repository", seed=0).prompts[0]
    nums = [int(s.text) for s in p.statements]
    assert [(s.useful, s.step) for s in p.statements] == [
        (bool(a or b), 2 if b else int(a)) for a, b in _repository_labels(nums, 2)]
    # corrupted lists keep their answer (no copy among the k smallest is dropped) and are labelled
    # as the repository labels the list that is left
    clean = nr.tasks.kth_smallest(300, length=16, k=2, max_n=20, style="repository", seed=5)
    for corrupt in ("drop", "shuffle"):
        bad = nr.tasks.kth_smallest(300, length=16, k=2, max_n=20, style="repository", seed=5, corrupt=corrupt,
                                    n_corrupt=3)
        for p, c in zip(bad, clean):
            nums = [int(s.text) for s in p.statements]
            assert p.answer == str(sorted(nums)[1]) == c.answer
            assert len(nums) == 16 - 3 * (corrupt == "drop")
            assert [(s.useful, s.step) for s in p.statements] == [
                (bool(a or b), 2 if b else int(a)) for a, b in _repository_labels(nums, 1)]
    ex = nr.tasks.examples("kth_smallest", 3, style="repository", length=16, k=2)
    assert ex[0].prompt == nr.tasks.kth_smallest(3, length=16, k=2, style="repository").prompts[0].text
    with pytest.raises(TaskError, match="style"):
        nr.tasks.kth_smallest(3, style="gpt2")
    with pytest.raises(TaskError, match="toolkit style"):
        nr.tasks.kth_smallest_pairs(3, style="repository")


def test_arc_published_street_files_load_with_their_reasoning_graphs():
    """STREET's reasoning-annotated ARC rows (the repository's --data_dir .../arc): the units but
    the answer's are the statements; the graph's edges before the answer unit give the steps."""
    ds = nr.tasks.load_reasoning(DATA / "arc_street.jsonl", "arc")
    assert len(ds) == 2 and ds.params["format"] == "arc_street"
    one, two = ds.prompts
    assert [s.text for s in one.statements] == ["Plants need sunlight to make food.", "A cactus is a plant.",
                                                "Rocks are hard.", "A cactus needs sunlight to make food."]
    assert [(s.useful, s.step) for s in one.statements] == [(True, 1), (True, 1), (False, 0), (True, 2)]
    assert one.question == "Question : What does a cactus need to make food? (A) sunlight (B) rocks Answer :"
    assert one.answer == "A"
    assert [s.step for s in two.statements] == [2, 1, 2, 3, 0]  # 2 -> 3, then 1 and 3 -> 4
    assert len(nr.tasks.load_reasoning(DATA / "arc_street.jsonl", "arc", max_depth=1)) == 1
    shots = nr.tasks.load_reasoning(DATA / "arc_street.jsonl", "arc", n_shots=1)
    assert shots.prompts[0].prefix.endswith("Answer : A") and shots.prompts[0].statements == one.statements


def test_proof_strings_parse_into_trees():
    from nnsight_reasoning.tasks.reasoning import parse_proof, proof_steps

    assert parse_proof("[(triple4)]") == (["triple4"], [])
    nodes, edges = parse_proof("[(((triple1 triple2) -> rule1))]")
    assert nodes == ["triple1", "triple2", "rule1"] and edges == [("triple1", "rule1"), ("triple2", "rule1")]
    nodes, edges = parse_proof("[(((((triple6) -> rule2) triple3) -> rule1))]")
    assert edges == [("triple6", "rule2"), ("rule2", "rule1"), ("triple3", "rule1")]
    # rule1 concludes last (step 3); rule2's conclusion and triple3 feed it (step 2); triple6 first
    assert proof_steps(nodes, edges) == {"triple6": 1, "rule2": 2, "triple3": 2, "rule1": 3}
    with pytest.raises(TaskError, match="unbalanced"):
        parse_proof("[(triple1))]")


def test_proofwriter_published_files_load_as_the_repository_keeps_them(tmp_path):
    """ProofWriter's own meta-*.jsonl: a prompt per question with one proof (none without a
    proof, with negation as failure, with several proofs or applying one rule twice),
    statements = triples then rules."""
    ds = nr.tasks.load_reasoning(DATA / "proofwriter_meta.jsonl")
    assert len(ds) == 4 and ds.labelled and ds.params["format"] == "proofwriter_published"
    first, second, fourth, deep = ds.prompts
    assert [s.text for s in first.statements][:2] == ["Anne is kind.", "Bob is red."] and len(first.statements) == 5
    assert first.question == "Question : Anne is kind. Answer :" and first.answer == "True"
    assert [(s.useful, s.step) for s in first.statements] == [(True, 1)] + [(False, 0)] * 4
    assert [s.step for s in second.statements] == [1, 0, 2, 0, 0] and second.text.startswith("Anne is kind. Bob")
    assert [s.step for s in fourth.statements] == [0, 1, 0, 0, 2] and fourth.answer == "False"
    assert [s.step for s in deep.statements] == [1, 2, 2, 3] and ds.n_steps == 3
    assert len(nr.tasks.load_reasoning(DATA / "proofwriter_meta.jsonl", max_depth=1)) == 3
    shots = nr.tasks.load_reasoning(DATA / "proofwriter_meta.jsonl", n_shots=2, seed=1)
    p = shots.prompts[0]
    assert p.prefix.count("Question :") == 2 and p.text.endswith(first.text) and p.statements == first.statements
    lo, hi = p.spans()[0]
    assert p.text[lo:hi] == "Anne is kind." and lo > len(p.prefix)  # the probed statements are the query's
    for bad, msg in [('{"theory": "x", "triples": {}, "rules": {}, "questions": '
                      '{"Q1": {"question": "q", "answer": true, "QDep": 0, "QLen": 1, "proofs": "[(triple9)]"}}}',
                      "names triple9, which the theory lacks"),
                     ('{"theory": "x", "triples": {}, "rules": {}, "questions": {}}\nnot json', "line 2: not JSON"),
                     ('{"theory": "x", "triples": {"triple1": "no text"}, "rules": {}, "questions": {}}',
                      "needs triples/rules with 'text'")]:
        f = tmp_path / "meta.jsonl"
        f.write_text(bad + "\n")
        with pytest.raises(TaskError, match=msg):
            nr.tasks.load_reasoning(f)
    with pytest.raises(TaskError, match="apply to the published ProofWriter and ARC"):
        nr.tasks.load_reasoning(DATA / "proofwriter.jsonl", max_depth=1)


# --------------------------------------------------------------------------- attention
def _reference(hf, tokenizer, prompts, statement_tokens):
    """Plain HF forward with output_attentions, one prompt at a time: patterns, entropy, mass."""
    out = []
    for p, owner in zip(prompts, statement_tokens):
        ids = torch.tensor([tokenizer(p.text)["input_ids"]])
        with torch.no_grad():
            att = torch.stack(hf(ids, output_attentions=True).attentions)[:, 0].double().numpy()  # (L, H, T, T)
        last = att[:, :, -1]
        ent = np.array([[-sum(x * np.log(x) for x in row if x > 0) for row in lh] for lh in last])
        groups = {"other": [j for j, s in enumerate(owner) if s < 0]}
        groups["useless"] = [j for j, s in enumerate(owner) if s >= 0 and not p.statements[s].useful]
        for step in range(1, 4):
            groups[f"step{step}"] = [j for j, s in enumerate(owner) if s >= 0 and p.statements[s].useful
                                     and p.statements[s].step == step]
        mass = {g: last[:, :, idx].sum(-1) for g, idx in groups.items()}
        out.append((att, ent, mass))
    return out


def test_attention_matches_plain_pytorch(embedded_model, embedded_tokenizer):
    # two list lengths: grouped into two passes, NaN padding, query coordinate -1
    prompts = ReasoningPrompts("kth_smallest", {}, nr.tasks.kth_smallest(6, length=4, k=2, seed=0).prompts
                               + nr.tasks.kth_smallest(5, length=6, k=3, seed=1).prompts)
    ds = nr.attention(embedded_model, prompts, patterns="all", batch_size=4, progress=False)
    nr.testing.assert_valid_result(ds)
    # Independent token map: the embedded tokenizer is word-level and the numbers follow
    # "<bos> Numbers :", so statement i is token 3 + i.
    owners = [[-1, -1, -1] + list(range(len(p.statements))) + [-1] * 5 for p in prompts]
    hf = AutoModelForCausalLM.from_pretrained(embedded.revision_path("main"), attn_implementation="eager").eval()
    ref = _reference(hf, embedded_tokenizer, prompts, owners)
    assert ds.sizes["key"] == 14 and list(ds["query"].values) == list(range(14)) and ds.attrs["n_forward_passes"] == 4
    assert ds.attrs["method"] == "attention" and ds.attrs["patterns"] == "all" and ds.attrs["batch_size"] == 4
    for i, (att, ent, mass) in enumerate(ref):
        t = att.shape[-1]
        assert list(ds["statement"].values[i, :t]) == owners[i]
        np.testing.assert_allclose(ds["attention"].values[i, :, :, :t, :t], att, atol=2e-6)
        assert np.isnan(ds["attention"].values[i, :, :, t:]).all() and np.isnan(ds["attention"].values[i, ..., t:]).all()
        np.testing.assert_allclose(ds["prompt_entropy"].values[i], ent, atol=1e-5)
        for g in ds["group"].values:
            np.testing.assert_allclose(ds["mass"].sel(group=g).values[i], mass[str(g)], atol=1e-6, err_msg=str(g))
    np.testing.assert_allclose(ds["mass"].sum("group").values, 1.0, atol=1e-5)
    assert "head_entropy" not in ds  # lists of 4 and 6 numbers: no common distribution to average
    last = nr.attention(embedded_model, prompts, layers=[2, 0], heads=[1], progress=False)
    nr.testing.assert_valid_result(last)
    assert list(last["query"].values) == [-1] and list(last["layer"].values) == [0, 2]
    for i, (att, _, _) in enumerate(ref):
        t = att.shape[-1]
        np.testing.assert_allclose(last["attention"].values[i, :, 0, 0, :t], att[[0, 2], 1, -1], atol=2e-6)


@pytest.mark.parametrize("model_type", ["gpt2", "gptj", "llama"])
def test_attention_other_architectures_and_multi_token_statements(tiny_model_dir, model_type):
    path = tiny_model_dir(model_type)
    model = nr.load_model(str(path))
    prompts = nr.tasks.load_reasoning(DATA / "proofwriter.jsonl")
    ds = nr.attention(model, prompts, patterns="none", progress=False)
    nr.testing.assert_valid_result(ds)
    hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    tok = model.tokenizer
    owners = []
    for p in prompts:  # independent map: count words (the tokenizer is word-level) per statement
        words = ["<bos>"] + p.prefix.split()
        owner = [-1] * len(words)
        for s_i, s in enumerate(p.statements):
            owner += [s_i] * len(tok(s.text, add_special_tokens=False)["input_ids"])
        owner += [-1] * len(tok(p.question, add_special_tokens=False)["input_ids"])
        owners.append(owner)
    for i, (_, ent, mass) in enumerate(_reference(hf, tok, prompts, owners)):
        np.testing.assert_allclose(ds["prompt_entropy"].values[i], ent, atol=1e-5)
        for g in ds["group"].values:
            np.testing.assert_allclose(ds["mass"].sel(group=g).values[i], mass[str(g)], atol=1e-6)
    assert "attention" not in ds and ds["n_tokens"].sel(group="step3").values[1] == owners[1].count(3) > 1


def test_head_entropy_by_position_and_rank_as_the_repository(embedded_model, embedded_tokenizer):
    """MechanisticProbe's head entropy (src/stask/prune.py): the last query's attention over the
    numbers averaged over the prompts first, in position order or reordered by size rank, then
    scipy's entropy (which renormalises) / log N; checked against plain HF attentions."""
    from scipy.stats import entropy

    prompts = nr.tasks.kth_smallest(40, length=5, k=2, seed=3)
    ds = nr.attention(embedded_model, prompts, patterns="none", progress=False)
    nr.testing.assert_valid_result(ds)
    hf = AutoModelForCausalLM.from_pretrained(embedded.revision_path("main"), attn_implementation="eager").eval()
    ids = torch.tensor([embedded_tokenizer(p.text)["input_ids"] for p in prompts])  # one length
    with torch.no_grad():
        last = torch.stack(hf(ids, output_attentions=True).attentions, 1)[:, :, :, -1].double().numpy()
    numbers = last[..., 3:8]  # (prompt, L, H, 5): the numbers follow "<bos> Numbers :"
    by_rank = np.stack([numbers[i][..., np.argsort([int(s.text) for s in p.statements])]
                        for i, p in enumerate(prompts)])
    for view, a in (("position", numbers), ("rank", by_rank)):
        mean = a.mean(0)
        np.testing.assert_allclose(ds["statement_attention"].sel(view=view).values, mean, atol=1e-6)
        want = np.array([[entropy(mean[li, h]) / np.log(5) for h in range(4)] for li in range(4)])
        np.testing.assert_allclose(ds["head_entropy"].sel(view=view).values, want, atol=1e-5)
    # the answer is the 2nd smallest: some head puts most of its attention on rank 1
    assert float(ds["statement_attention"].sel(view="rank", slot=1).max()) > 0.5
    for kind in ("entropy", "rank"):
        nr.plot_result(ds, kind=kind)
    # repeated numbers (the repository's format): rank r reads the first copy of the r-th smallest
    # value (head_calculation's data_num.index), so a repeated value's first copy fills all its ranks
    rep = nr.tasks.kth_smallest(30, length=8, k=2, max_n=5, style="repository", seed=1)
    rds = nr.attention(embedded_model, rep, patterns="none", progress=False)
    rids = torch.tensor([embedded_tokenizer(p.text)["input_ids"] for p in rep])  # "<bos> n n …": one token each
    with torch.no_grad():
        rlast = torch.stack(hf(rids, output_attentions=True).attentions, 1)[:, :, :, -1, 1:9].double().numpy()
    firsts = [[nums.index(v) for v in sorted(nums)] for nums in ([int(s.text) for s in p.statements] for p in rep)]
    assert any(len(set(f)) < 8 for f in firsts)  # repeats happen
    np.testing.assert_allclose(rds["statement_attention"].sel(view="rank").values,
                               np.stack([rlast[i][..., f] for i, f in enumerate(firsts)]).mean(0), atol=1e-6)
    words = nr.tasks.load_reasoning(DATA / "proofwriter.jsonl")  # statements are sentences: no rank view
    ent = nr.attention(embedded_model, ReasoningPrompts("proofwriter", {}, words.prompts[:1]), patterns="none",
                       progress=False)
    assert np.isnan(ent["head_entropy"].sel(view="rank").values).all()
    assert np.isfinite(ent["head_entropy"].sel(view="position").values).all()
    with pytest.raises(UsageError, match="statements are numbers"):
        nr.plot_result(ent, kind="rank")


def test_attention_errors_are_clear(embedded_model, tiny_model_dir):
    prompts = nr.tasks.kth_smallest(4)
    for kwargs, msg in [(dict(heads=[4]), "head 4 is out of range"), (dict(layers=[9]), "layer 9"),
                        (dict(patterns="some"), "patterns must be")]:
        with pytest.raises(UsageError, match=msg):
            nr.attention(embedded_model, prompts, progress=False, **kwargs)
    sdpa = nr.load_model(str(tiny_model_dir("gpt_neox")), attn_implementation="sdpa")
    with pytest.raises(UsageError, match="eager"):
        nr.attention(sdpa, prompts, progress=False)


# --------------------------------------------------------------------------- per-head patching
def test_per_head_patching_on_kth_smallest_matches_hooks(embedded_model, embedded_tokenizer):
    pairs = nr.tasks.kth_smallest_pairs(3, seed=0)
    ds = nr.patch(embedded_model, pairs, sites=["head"], positions="last", progress=False)
    assert ds["heads"].dims == ("prompt", "layer", "position", "head")
    hf = AutoModelForCausalLM.from_pretrained(embedded.revision_path("main"), attn_implementation="eager").eval()
    _compare(ds, reference_patch(hf, embedded_tokenizer, list(pairs), ["head"], "last", "stolfo_ie", 4), "stolfo_ie",
             _logit_scale(hf, embedded_tokenizer, pairs))
    with pytest.raises(UsageError, match="kth_smallest_pairs"):
        nr.patch(embedded_model, nr.tasks.kth_smallest(4), sites=["head"])


def test_attention_over_checkpoints_equals_single_runs(embedded_model):
    prompts = nr.tasks.kth_smallest(8, seed=2)
    sweep = nr.attention(None, prompts, revisions="step0,main", progress=False)
    single = nr.attention(embedded_model, prompts, progress=False)
    nr.testing.assert_valid_result(sweep)
    assert sweep["prompt_entropy"].dims == ("checkpoint", "prompt", "layer", "head")
    for v in ("attention", "prompt_entropy", "mass", "head_entropy", "statement_attention"):
        np.testing.assert_allclose(sweep[v].sel(checkpoint="main").values, single[v].values, atol=1e-6)
    # the untrained checkpoint attends almost uniformly (entropy near ln T); trained heads focus
    assert sweep["prompt_entropy"].sel(checkpoint="step0").min() > 0.99 * np.log(13)
    assert sweep["prompt_entropy"].sel(checkpoint="main").mean("prompt").min() < 0.5
    assert sweep["head_entropy"].sel(checkpoint="step0").min() > 0.95  # normalised: 1 = uniform
    assert sweep["head_entropy"].sel(checkpoint="main", view="rank").min() < 0.5
    fig = nr.plot_result(sweep, kind="heatmap")  # one model per heatmap: the sweep's last
    assert "embedded@main:" in fig._suptitle.get_text()
