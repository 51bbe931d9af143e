"""Every command against a table of bad inputs (issue 27): each gives exit 2, one line on
stderr that names the problem and the fix, no traceback, and writes nothing (no results
file, no parts folder, no lock, no probe file). The table is keyed by command and the test
enumerates the CLI, so a command added without entries fails here."""
from __future__ import annotations

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from nnsight_reasoning.cli.main import app

from .clirun import TOOLS  # their arguments are given whole (no --out added)

runner = CliRunner()

# made in each case's folder before the command runs ({d} in a case's arguments)
FILES = {
    "empty.jsonl": b"", "text.jsonl": b"hello world\nthis is not json\n", "binary.jsonl": bytes(range(256)),
    "wrongcols.jsonl": b'{"a": 1}\n', "array.json": b'[{"question": "q"}]', "list.jsonl": b'{"question": "q", "answer": "a #### 1"}\n[1, 2]\n', "wrongcols.csv": b"a,b\n1,2\n", "notes.txt": b"hello\n",
    "junk.nc": b"not a netCDF file", "a_file": b"x", "exists.nc": b"an earlier result",
}
DIRS = ("a_dir.nc",)


CASES: list[tuple[str, list[str], str]] = [
    # unknown names
    ("patch", ["--task", "nope"], "unknown task 'nope'"),
    ("patch", ["--task", "binding"], "no clean/corrupted prompt pairs"),
    ("patch", ["--site", "banana"], "unknown site 'banana'"),
    ("patch", ["--metric", "kl"], "unknown metric"),
    ("patch", ["--positions", "middle"], "--positions must be"),
    ("patch", ["--revision", "step999"], "no revision 'step999'"),
    ("patch", ["--model", "/no/such/model/dir"], "no such model directory"),
    ("patch", ["--model", "nobody/no-such-model"], "could not load model"),  # HF_HUB_OFFLINE=1 in the tests
    ("evaluate", ["--task", "nope"], "unknown task 'nope'"),
    ("evaluate", ["--revision", "step999"], "no revision 'step999'"),
    ("attention", ["--task", "arithmetic"], "has no reasoning-tree labels"),
    ("attention", ["--corrupt", "bogus"], "corrupt must be one of"),
    ("probe", ["--pool", "bogus"], "pool must be heads or mean"),
    ("probe", ["--distance", "bogus"], "distance must be one of"),
    ("probe", ["--query", "bogus"], "query must be one of"),
    ("probe", ["--baseline", "bogus"], "baseline must be one of"),
    ("prune", ["--ordering", "bogus"], "orderings must be some of"),
    ("circuit", ["--selection", "bogus"], "selection must be one of"),
    ("circuit", ["--metric", "bogus"], "metric must be one of"),
    ("circuit", ["--ablation", "bogus"], "ablation must be one of"),
    ("circuit", ["--ig-variant", "bogus"], "ig_variant must be one of"),
    ("path-patching", ["--receivers", "bogus"], "unknown receiver 'bogus'"),
    ("path-patching", ["--receivers", "a3.3", "--receiver-input", "z"], "receiver_input must be one of"),
    ("path-patching", ["--receivers", "a3.3", "--position", "mid"], "position must be one of"),
    ("neurons", ["--variant", "bogus"], "unknown variant 'bogus'"),
    ("neurons", ["--unit", "bad"], "a unit is a neuron named like L3N488"),
    ("neurons", ["--generate", "--style", "bogus"], "unknown prompt style 'bogus'"),
    ("neurons", ["--generate", "--ranking", "bogus"], "unknown ranking 'bogus'"),
    ("neurons", ["--generate", "--select", "bogus"], "unknown select 'bogus'"),
    ("neurons", ["--generate", "--ablation", "bogus"], "unknown ablation(s) ['bogus']"),
    ("neurons", ["--discover-on", "bogus"], "unknown variant 'bogus'"),
    ("binding", ["--family", "nope"], "family must be one of"),
    ("binding", ["--measure", "nope"], "unknown measure 'nope'"),
    ("binding", ["--window", "bogus"], "--window must be one of full, local"),
    ("binding", ["--family", "onehop"], "use words this tokenizer does not know"),
    ("finetune", ["--task", "nope", "--out", "{d}/ft"], "unknown task 'nope'"),
    ("finetune", ["--tune", "bogus", "--out", "{d}/ft"], "tune must be one of"),
    ("tasks", ["nope"], "unknown task 'nope'"),
    ("remote status", ["--host", "::::"], "NDIF host must start with http:// or https://"),
    # out-of-range layer / head / neuron
    ("patch", ["--layer", "7"], "layer 7 is out of range"),
    ("attention", ["--layer", "9"], "layer 9 is out of range"),
    ("attention", ["--head", "7"], "head 7 is out of range"),
    ("path-patching", ["--receivers", "a9.9"], "unknown receiver 'a9.9'"),
    ("path-patching", ["--receivers", "a3.3", "--senders", "a9.0"], "unknown sender 'a9.0'"),
    ("copy-suppression", ["--heads", "a9.9"], "head a9.9 is outside this model's 4 layers"),
    ("copy-suppression", ["--start-layer", "9"], "start_layer must be an integer from 0 to 3"),
    ("neurons", ["--unit", "L9N0"], "layer 9 is not among the layers searched"),
    # zero and negative sizes
    ("patch", ["--max-n", "1"], "max_n >= 2"),
    ("evaluate", ["--n-prompts", "0"], "n_prompts must be an integer >= 1"),
    ("evaluate", ["--n-prompts", "-3"], "n_prompts must be an integer >= 1"),
    ("logit-lens", ["--layer", "9"], "layer 9 is out of range: this model has layers -1..3 (-1: the embeddings)"),
    ("logit-lens", ["--top-k", "0"], "top_k must be an integer in 1.."),
    ("logit-lens", ["--read", "mid"], "read the same stream in parallel: use read='output'"),
    ("logit-lens", ["--task", "nope"], "unknown task 'nope'"),
    ("attention", ["--n-prompts", "0"], "n_prompts must be an integer >= 1"),
    ("attention", ["--k", "0"], "k must be an integer between 1 and 5"),
    ("attention", ["--length", "1"], "length must be an integer between 2 and 12"),
    ("probe", ["--n-neighbors", "0"], "n_neighbors must be an integer >= 1"),
    ("probe", ["--folds", "1"], "need folds >= 2"),
    ("prune", ["--fraction", "1.5"], "fractions must be in (0, 1]"),
    ("prune", ["--fraction", "0"], "fractions must be in (0, 1]"),
    ("prune", ["--n-random", "-1"], "n_random must be >= 1"),
    ("robustness", ["--n-subsets", "0"], "need n_subsets >= 2"),
    ("robustness", ["--n-bins", "0"], "n_bins >= 1"),
    ("robustness", ["--baseline-prompts", "1"], "baseline_prompts must be an integer from 2·folds"),
    ("robustness", ["--baseline-prompts", "20", "--baseline", "none"], "with baseline='none' there is none"),
    ("robustness", ["--n-neighbors", "0"], "n_neighbors must be an integer >= 1"),
    ("heads", ["--n-sequences", "0"], "n_sequences must be an integer >= 1"),
    ("heads", ["--seq-len", "1"], "seq_len must be between 2 and"),
    ("heads", ["--seq-len", "-4"], "seq_len must be between 2 and"),
    ("circuit", ["--sizes", "0"], "circuit sizes must be >= 1 edges"),
    ("circuit", ["--ig-steps", "0"], "ig_steps must be an integer >= 1"),
    ("circuit", ["--min-fraction", "-0.5"], "min_fraction is the share of the logit difference to keep"),
    ("path-patching", ["--receivers", "a3.3", "--n-prompts", "0"], "n_prompts must be an integer >= 1"),
    ("ioi-components", ["--top-k", "0"], "top_k must be an integer >= 1"),
    ("ioi-components", ["--copy-threshold", "-1"], "copy_threshold is a copy score in percent"),
    ("backup-heads", ["--heads", "a9.0"], "head a9.0 is outside this model's 4 layers"),
    ("backup-heads", ["--copy-threshold", "101"], "copy_threshold is a copy score in percent"),
    ("copy-suppression", ["--n-mean", "0"], "n_mean must be an integer from 1"),
    ("copy-suppression", ["--k-unembeddings", "2"], "k_unembeddings must be in (0, 1]"),
    ("copy-suppression", ["--seq-len", "1"], "--seq-len must be >= 4"),
    ("self-repair", ["--heads", "a9.9"], "head a9.9 is outside this model's 4 layers"),
    ("self-repair", ["--ablation", "bogus"], "ablation must be one of resample, zero, mean"),
    ("self-repair", ["--threshold", "-1"], "threshold must be a number >= 0"),
    ("neurons", ["--top-k", "0"], "top_k must be an integer >= 1"),
    ("neurons", ["--min-frequency", "2"], "min_frequency must be in (0, 1]"),
    ("neurons", ["--n-steps", "9"], "n_steps must be an integer between 1 and 3"),
    ("neurons", ["--n-shots", "-1"], "n_shots must be an integer between 0 and 8"),
    ("neurons", ["--generate", "--max-new-tokens", "0"], "max_new_tokens must be an integer >= 1"),
    ("neurons", ["--generate", "--noise-scale", "-1"], "noise_scale must be > 0"),
    ("binding", ["--n-pairs", "1"], "at least 2 pairs per context"),
    ("binding", ["--n-contexts", "0"], "n_contexts must be an integer >= 1"),
    ("binding", ["--measure", "means", "--cross-attributes"], "--cross-attributes applies to --measure subspace only"),
    ("binding", ["--n-estimate", "-1"], "n_estimate must be an integer >= 1"),
    ("binding", ["--entity-tokens", "0"], "--entity-tokens must be >= 1"),
    ("binding", ["--max-offset", "-2"], "--max-offset must be >= 0"),
    ("binding", ["--measure", "mcq", "--max-width", "0"], "--max-width must be >= 1"),
    ("successor-heads", ["--revision", "step999"], "no revision 'step999'"),
    ("finetune", ["--steps", "0", "--out", "{d}/ft"], "steps must be an integer >= 1"),
    ("finetune", ["--out", "/proc/ft"], "--out /proc/ft: cannot create files in /proc"),
    ("finetune", ["--out", "{d}/a_file/ft"], "is a file, not a directory"),
    ("finetune", ["--save-every", "0", "--out", "{d}/ft"], "save_every must be an integer >= 1"),
    ("finetune", ["--lr", "-1", "--out", "{d}/ft"], "lr must be > 0"),
    # malformed --param and option values
    ("patch", ["--param", "max_result=0"], "max_result must be"),
    ("patch", ["--param", "n_operands=9"], "n_operands must be"),
    ("patch", ["--param", "colour=red"], "unexpected keyword"),
    ("evaluate", ["--param", "n_operands"], "--param takes KEY=VALUE"),
    ("patch", ["--param", "seed=3"], "--param seed: the command sets it with --seed"),
    ("robustness", ["--n-corrupt", "0"], "n_corrupt must be an integer >= 1 (got 0)"),
    ("probe", ["--step-f1", "labels"], "step_f1 must be one of classes, repository"),
    ("probe", ["--task", "proofwriter", "--data", "{d}/a_dir.nc"], "holds no meta-train/dev/test.jsonl"),
    ("probe", ["--task", "proofwriter", "--data", "{d}/wrongcols.jsonl", "--param", "by_size=1,2"],
     "by_size and min_depth to ProofWriter's; wrongcols.jsonl is not one"),
    ("robustness", ["--choices", "True,False"], "every prompt's among them (missing: "),
    ("circuit", ["--exact", "--selection", "topn"], "--exact patches every edge and makes no circuits"),
    ("heads", ["--seq-len", "200"], "longer than this model's context (256): use seq_len <= 127"),
    ("neurons", ["--ranking", "nosuch", "--ablation", "zero"], "--ranking, --ablation only apply with --generate"),
    ("neurons", ["--generate", "--n-shots", "3"], "--n-shots only applies without --generate: drop it"),
    # given on the command line, even at its default value, is given (click's parameter source)
    ("neurons", ["--max-new-tokens", "48"], "--max-new-tokens only applies with --generate"),
    ("neurons", ["--generate", "--n-shots", "1"], "--n-shots only applies without --generate: drop it"),
    ("attention", ["--param", "n_prompts=3"], "--param n_prompts: the command sets it with --n-prompts"),
    ("patch", ["--max-n", "5", "--param", "max_n=7"], "--param max_n and the command's own option for max_n both"),
    ("finetune", ["--out", "{d}/ft", "--param", "n_prompts=3"], "--param n_prompts: the command sets it with --batch-size"),
    ("finetune", ["--out", "{d}/ft", "--param", "lr=0.1"], "--param lr: the command sets it with --lr"),
    ("probe", ["--param", "max_n=5", "--param", "max_n=x"], "max_n must be"),  # the last --param counts
    ("evaluate", ["--param", "n_operands=["], "n_operands must be an integer between 2 and 3"),
    ("evaluate", ["--n-prompts", "abc"], "Invalid value for '--n-prompts'"),
    ("circuit", ["--sizes", "abc"], "--sizes must be comma-separated integers"),
    ("circuit", ["--thresholds", "x"], "--thresholds must be comma-separated numbers"),
    ("heads", ["--bogus"], "No such option: --bogus"),
    ("models", ["--bogus"], "No such option: --bogus"),
    # data files: missing, empty, wrong format, wrong columns, binary
    ("patch", ["--task", "factual_recall", "--data", "/no/such/lama"], "no such LAMA file or directory"),
    ("patch", ["--data", "lama.jsonl"], "unexpected keyword 'data' for task 'arithmetic'"),
    ("neurons", ["--data", "{d}/missing.jsonl"], "no such file"),
    ("neurons", ["--data", "{d}/empty.jsonl"], "empty.jsonl is empty"),
    ("neurons", ["--data", "{d}/text.jsonl"], "text.jsonl line 1 is not JSON"),
    ("neurons", ["--data", "{d}/binary.jsonl"], "binary.jsonl is not UTF-8 text"),
    ("neurons", ["--data", "{d}/wrongcols.jsonl"], "wrongcols.jsonl line 1 lacks ['answer', 'question']"),
    ("neurons", ["--data", "{d}/list.jsonl"], "list.jsonl line 2 is a JSON list, not an object"),
    ("neurons", ["--data", "{d}/array.json"], "array.json line 1 lacks ['answer']"),  # a JSON array is read
    ("binding", ["--measure", "mcq", "--data", "{d}/missing.tsv"], "no such file"),
    ("binding", ["--measure", "mcq", "--data", "{d}/wrongcols.csv"], "lacks column(s) ['label', 'sentence']"),
    ("binding", ["--data", "{d}/wrongcols.csv"], "--data is for --measure mcq"),
    ("copy-suppression", ["--data", "{d}/missing.txt"], "no such file"),
    ("ioi-components", ["--circuit", "{d}/missing.nc"], "no such file"),
    ("ioi-components", ["--circuit", "{d}/notes.txt"], "cannot read"),
    ("greater-than-components", ["--circuit", "{d}/missing.nc"], "run reason-interp circuit --task greater_than"),
    ("greater-than-components", ["--n-prompts", "0"], "n_prompts must be an integer >= 1"),
    ("backup-heads", ["--circuit", "{d}/missing.nc"], "no such file"),
    ("show", ["{d}/missing.nc"], "no such results file"),
    ("show", ["{d}/junk.nc"], "cannot read"),
    ("show", [], "Missing argument 'path'"),
    ("plot", ["{d}/missing.nc"], "no such results file"),
    ("plot", ["{d}/junk.nc"], "cannot read"),
    ("show", ["{d}/a_dir.nc"], "is a folder: give a results file (.nc)"),
    ("unit-overlap", ["{d}/missing.nc"], "no such results file"),
    ("unit-overlap", ["{d}/junk.nc"], "cannot read"),
    ("unit-overlap", [], "Missing argument 'paths'"),
    ("export-graph", ["{d}/missing.nc", "{d}/g.json"], "no such results file"),
    ("export-graph", ["{d}/junk.nc", "{d}/g.json"], "cannot read"),
    # output paths: unwritable, a directory, under a file, not .nc, existing
    ("patch", ["--out", "/proc/r.nc"], "cannot create files in /proc"),
    ("patch", ["--out", "{d}/a_file/r.nc"], "is a file, not a directory"),
    ("patch", ["--out", "{d}/a_dir.nc"], "is a directory"),
    ("patch", ["--out", "{d}/r.txt"], "--out must be a .nc file"),
    ("evaluate", ["--out", "{d}/exists.nc"], "exists: pass --force"),
    ("circuit", ["--out", "{d}/exists.nc"], "exists: pass --force"),
    ("finetune", ["--out", "{d}/notes.txt"], "is a file; give a directory"),
    # conflicting options
    ("patch", ["--method", "attribution", "--site", "embed"], "'embed' is patched exactly only"),
    ("patch", ["--method", "attribution", "--site", "neuron"], "'neuron' is patched exactly only"),
    ("patch", ["--method", "attribution", "--site", "mlp_dim"], "'mlp_dim' is patched exactly only"),
    ("patch", ["--method", "attribution", "--site", "attn_weights"], "'attn_weights' is patched exactly only"),
    ("patch", ["--method", "attribution", "--site", "attn_pattern"], "'attn_pattern' is patched exactly only"),
    ("patch", ["--method", "attribution", "--site", "attn_layer_pattern"],
     "'attn_layer_pattern' is patched exactly only"),
    ("patch", ["--method", "attribution", "--metric", "absolute"], "estimates stolfo_ie or logit_diff only"),
    ("patch", ["--revision", "main", "--revisions", "all"], "--revision"),
    ("robustness", ["--subset-min", "10", "--subset-max", "5"], "subset_size must satisfy"),
    ("circuit", ["--thresholds", "0.5", "--selection", "greedy"], "use it with selection='topn'"),
    ("patch", ["--adapter", "{d}/a_dir.nc", "--revisions", "all"], "--adapter is fine-tuned on one base checkpoint"),
    # a Dask cluster: a local one of N workers, or a running one's address
    ("evaluate", ["--revisions", "all", "--workers", "0"], "workers must be an integer >= 1"),
    ("patch", ["--workers", "2", "--scheduler", "tcp://127.0.0.1:9"], "not both"),
    ("evaluate", ["--scheduler", "localhost"], "scheduler takes an address such as tcp://"),
    ("evaluate", ["--revisions", "step0,main", "--scheduler", "tcp://127.0.0.1:9"],
     "no Dask scheduler answers at tcp://127.0.0.1:9"),
    # a device map: a strategy, a JSON object or a JSON file of one
    ("patch", ["--device-map", "everywhere"], "--device-map takes auto, balanced"),
    ("patch", ["--device-map", "{d}/notes.txt"], "--device-map: not JSON"),
    ("evaluate", ["--device-map", '{{"lm_head": [0]}}'], "--device-map must map module names to devices"),
]

# NDIF refuses commands that read the weights (a key and a host are set; nothing is contacted)
REMOTE_ENV = {"NDIF_API_KEY": "dummy-key-never-shown", "NDIF_HOST": "http://127.0.0.1:9"}
REMOTE_CASES = [
    ("successor-heads", ["--remote"], "NDIF does not send"),
    ("ioi-components", ["--remote"], "NDIF does not send"),
    ("greater-than-components", ["--remote"], "NDIF does not send"),
    ("backup-heads", ["--remote"], "NDIF does not send"),
    ("copy-suppression", ["--remote"], "NDIF does not send"),
]


def cli_commands() -> set[str]:
    root = get_command(app)
    names = set()
    for name, cmd in root.commands.items():
        names |= {f"{name} {sub}" for sub in getattr(cmd, "commands", {})} or {name}
    return names


def test_the_table_covers_every_command():
    covered = {c for c, _, _ in CASES + REMOTE_CASES}
    assert cli_commands() == covered, f"commands without bad-input cases: {sorted(cli_commands() - covered)}"
    assert len(CASES) + len(REMOTE_CASES) >= 60


def _ids(cases):
    return [f"{c}:{' '.join(a)}" for c, a, _ in cases]


@pytest.mark.parametrize("command,args,needle", CASES + REMOTE_CASES, ids=_ids(CASES + REMOTE_CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, command, args, needle):
    for name, content in FILES.items():
        (tmp_path / name).write_bytes(content)
    for name in DIRS:
        (tmp_path / name).mkdir()
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    argv = [*command.split(), *(a.format(d=tmp_path) for a in args)]
    if command.split()[0] not in TOOLS:
        argv.append("--no-progress")
        if "--out" not in args:
            argv += ["--out", str(tmp_path / "r.nc")]
    env = REMOTE_ENV if (command, args, needle) in REMOTE_CASES else None
    res = runner.invoke(app, argv, env=env)
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], res.stderr
    assert "Traceback" not in res.output and "dummy-key" not in res.output
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    assert after == before, f"left behind or touched: {sorted(set(after) ^ set(before))}"
