"""Fixture ladder: tiny random models built here (no download), then the embedded model."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
# rich sizes tables to the terminal; tests read CLI output, so they must not depend on the
# width of whatever terminal (or none, in CI) runs them.
os.environ["COLUMNS"] = "160"
# The fast tier runs on every core with pytest-xdist (`-n auto` in pyproject's addopts), one
# process per core: each process, and the CLI processes its tests start, then gets its share
# of the cores instead of all of them (oversubscribed threads only wait on each other).
def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(2, _cores() // _WORKERS))
if _WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(_THREADS)
torch.set_num_threads(_THREADS)


def _selects_slow(expr: str) -> bool:
    """Whether the ``-m`` expression selects tests marked slow (alone or with remote)."""
    if not expr.strip():  # no selection: every test, the slow ones included
        return True
    try:
        from _pytest.mark.expression import Expression  # pytest's own evaluator (not public API)

        compiled = Expression.compile(expr)
        return any(compiled.evaluate(lambda name, *_, marks=marks, **__: name in marks)
                   for marks in ({"slow"}, {"slow", "remote"}))
    except Exception:  # another pytest: by the name
        return "slow" in expr.replace("not slow", "")


@pytest.hookimpl(optionalhook=True)  # xdist's hook: without xdist it is never called
def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core (``PYTEST_XDIST_AUTO_NUM_WORKERS`` still sets it)."""
    return int(os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS") or _cores())


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups (``--dist loadgroup``, pyproject's addopts)
def pytest_collection_modifyitems(config, items):
    """When slow tests are selected (`-m slow`, `-m remote`, `-m ""`), each worker takes whole
    test files (their tests were written to run one after another: kill-and-resume, clusters,
    notebooks) and one worker every test that uses the loopback NDIF server, so that one
    server is started, not one per worker. The fast tier's tests are spread one by one."""
    if not _selects_slow(config.getoption("markexpr", "") or ""):
        return
    for item in items:
        group = "ndif" if "ndif" in getattr(item, "fixturenames", ()) else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(autouse=True)
def _close_figures():
    """Figures a test drew (nr.plot_result returns them open, for Jupyter) are closed after it."""
    yield
    import sys

    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


@pytest.fixture(scope="session")
def embedded_tokenizer():
    from nnsight_reasoning.embedded import load_tokenizer

    return load_tokenizer()


def _tiny(model_type: str, vocab_size: int, n_layers: int = 2, positions: int = 128):
    """A small random model of one architecture family; init scaled up so effects are visible.
    ``n_layers``: for Llama and the llama-like families (default 2); ``positions``: their context."""
    import transformers as tf

    common = dict(vocab_size=vocab_size, initializer_range=0.2)
    # llama-like families: grouped key/value heads; gemma/gemma2 with a head_dim that is not
    # hidden / heads (as Gemma-7B: 256, not 3072 / 16), so code that derives it gets it wrong
    rope = dict(hidden_size=32, num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=64, max_position_embeddings=positions, **common)
    if model_type == "gpt_neox":
        cfg = tf.GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                               max_position_embeddings=128, use_parallel_residual=False, **common)
        cls = tf.GPTNeoXForCausalLM
    elif model_type == "gpt2":
        cfg = tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, **common)
        cls = tf.GPT2LMHeadModel
    elif model_type == "gptj":
        cfg = tf.GPTJConfig(n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=128, **common)
        cls = tf.GPTJForCausalLM
    elif model_type == "mistral":
        cfg, cls = tf.MistralConfig(**rope), tf.MistralForCausalLM
    elif model_type == "qwen2":
        cfg, cls = tf.Qwen2Config(**rope), tf.Qwen2ForCausalLM
    elif model_type == "gemma":
        cfg, cls = tf.GemmaConfig(**{**rope, "num_key_value_heads": 1}, head_dim=16), tf.GemmaForCausalLM
    elif model_type == "gemma2":
        cfg = tf.Gemma2Config(**rope, head_dim=16, query_pre_attn_scalar=16, sliding_window=4)
        cls = tf.Gemma2ForCausalLM
    else:
        cfg = tf.LlamaConfig(**rope)  # the same settings as the llama-like families
        cls = tf.LlamaForCausalLM
    torch.manual_seed(0)
    model = cls(cfg).eval()
    if model_type in ("mistral", "qwen2", "gemma", "gemma2"):
        # norms start at their identity (weight 1, or 0 for Gemma's 1 + weight); random gains
        # make a wrong gain convention visible in direct logit effects
        with torch.no_grad():
            for name, w in model.named_parameters():
                if "norm" in name:
                    w.add_(0.3 * torch.randn_like(w))
    return model


def tiny_bpe_llama(path, corpus: list[str], n_layers: int = 2, vocab_size: int = 1000, positions: int = 128,
                   bos: bool = False):
    """A tiny random Llama of ``n_layers`` and a context of ``positions`` in ``path`` with a
    byte-level BPE tokenizer of ``vocab_size`` trained on ``corpus`` (newlines and spaces are
    tokens' bytes, as in GPT-2 and Llama): for prompts whose words the embedded word-level
    vocabulary lacks. ``bos``: the tokenizer puts ``<s>`` before every text, as LLaMA's does
    (``add_special_tokens=False`` leaves it out). Returns ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<s>"] if bos else ["<|endoftext|>"]
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if bos:
        bpe.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", bpe.token_to_id("<s>"))])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                  **({"bos_token": "<s>"} if bos else {}))
    _tiny("llama", len(tok), n_layers, positions).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def tiny_sentencepiece_llama(path, corpus: list[str], n_layers: int = 2, individual_digits: bool = True):
    """A tiny random Llama in ``path`` with a tokenizer built like LLaMA's SentencePiece (a "▁"
    dummy prefix, spaces as "▁", every digit its own piece; BPE trained on ``corpus``), so " 5"
    is "▁", "5" and no digit answer is one token with its space: for LLaMA's answer rule, since
    no LLaMA tokenizer can be loaded offline. ``individual_digits=False``: digits stay together
    and apart from the space (" 18" is "▁", "18"), as Llama-3 writes numbers. Returns ``path``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    sp = Tokenizer(models.BPE(unk_token="<unk>"))
    sp.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    sp.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("▁", "merged_with_next"),
                                                pre_tokenizers.Digits(individual_digits=individual_digits)])
    sp.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=sp, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    _tiny("llama", len(tok), n_layers).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def tiny_year_bpe(path, model_type: str = "gpt_neox"):
    """A tiny random model in ``path`` with a byte-level BPE tokenizer that writes years as GPT-2
    and Pythia do: " 1732" is " 17", "32", and "32" and " 32" are different tokens (every pair of
    digits is merged first, in numeric order, then a space and two digits), so greater-than's
    answers must be read without their space. Every other word is its bytes. Returns ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0}
    for c in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[c] = len(vocab)
    digits = [f"{i:02d}" for i in range(100)]
    merges = [(d[0], d[1]) for d in digits] + [("Ġ", d) for d in digits]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    _tiny(model_type, len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded_tokenizer):
    """Factory: model_type -> directory with a tiny random model and the embedded tokenizer."""
    made = {}

    def make(model_type: str):
        if model_type not in made:
            path = tmp_path_factory.mktemp(f"tiny_{model_type}")
            _tiny(model_type, len(embedded_tokenizer)).save_pretrained(path)
            embedded_tokenizer.save_pretrained(path)
            made[model_type] = path
        return made[model_type]

    return make


@pytest.fixture
def hf_bars():
    """() -> (transformers' bars shown, the Hub's download bars shown); both switches are set back
    as they were when the test ends (they are process-wide: a test that flips them must not leak)."""
    import huggingface_hub.utils as hub
    from transformers.utils import logging as hf_logging

    def states():
        return hf_logging.is_progress_bar_enabled(), not hub.are_progress_bars_disabled()

    before = states()
    yield states
    (hf_logging.enable_progress_bar if before[0] else hf_logging.disable_progress_bar)()  # sets the Hub's too
    (hub.enable_progress_bars if before[1] else hub.disable_progress_bars)()


@pytest.fixture(scope="session")
def embedded_model():
    import nnsight_reasoning as nr

    return nr.load_model()


def eager_hf(path):
    """The plain HF model of ``path``, float32, eager attention: the hook references' model."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()


@pytest.fixture(scope="session")
def case_model(tiny_model_dir):
    """Factory: "embedded" or a model_type -> (the toolkit's model, the plain HF model) of one
    directory, for checks against hook references."""
    import nnsight_reasoning as nr
    from nnsight_reasoning.embedded import revision_path

    made = {}

    def get(name):
        if name not in made:
            path = revision_path("main") if name == "embedded" else tiny_model_dir(name)
            made[name] = (nr.load_model(str(path)), eager_hf(path))
        return made[name]

    return get


@pytest.fixture(scope="session")
def small_pairs(embedded_tokenizer):
    import nnsight_reasoning as nr

    return nr.tasks.arithmetic(n_prompts=6, seed=3, tokenizer=embedded_tokenizer)


# --------------------------------------------------------------------------- NDIF on loopback
_STACKS: list = []
_START_FAILURES: list[str] = []


@pytest.fixture(scope="session")
def ndif(tmp_path_factory):
    """A real NDIF server on 127.0.0.1 serving the embedded model (revision main).

    Started once per session, stopped (every process it started, by session id) even when
    tests fail. Without the server venv the remote tests skip, except under CI, where they
    must run: `.ci/run` installs it with scripts/install_ndif.sh.
    """
    from nnsight_reasoning import embedded

    from .ndif_stack import NDIFStack, installed

    if not installed():
        msg = "NDIF test stack not installed: run scripts/install_ndif.sh"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    # One retry on fresh ports: on a loaded CI machine the controller's deployment once
    # hung for 180 s (CI run 37) after passing in every run before. Both failures' logs
    # go to the terminal summary, so that a second failure can be diagnosed.
    for attempt in (1, 2):
        stack = NDIFStack(tmp_path_factory.mktemp("ndif"))
        try:
            stack.start([embedded.revision_path("main")])
            break
        except RuntimeError as e:
            _START_FAILURES.append(f"attempt {attempt}: {e}\n{stack.diagnostics()}")
            stack.stop()
            if attempt == 2:
                raise
    _STACKS.append(stack)
    try:
        yield stack
    finally:
        stack.stop()
        assert not stack.alive(), f"NDIF processes left running: {stack.alive()}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test that used the NDIF stack and failed gets the stack's log tails in its report: its
    directories go when the session ends, and a job once stayed QUEUED for 600 s in one CI run
    (session 70) with nothing left to say why."""
    outcome = yield
    report = outcome.get_result()
    stack = item.funcargs.get("ndif") if hasattr(item, "funcargs") else None
    if report.failed and stack is not None and hasattr(stack, "diagnostics"):
        report.sections.append(("NDIF test stack logs", stack.diagnostics(lines=40)))


def pytest_terminal_summary(terminalreporter):
    for failure in _START_FAILURES:
        terminalreporter.write_line(f"NDIF test stack failed to start, {failure}")
    for stack in _STACKS:
        t = ", ".join(f"{k} {v:.1f}" for k, v in stack.timings.items())
        terminalreporter.write_line(f"NDIF test stack ({stack.host}): {t}; "
                                    f"{stack.requests_received()} trace requests served")


NAMES = ("Anne", "Bob", "Charlie", "Dave", "Erin", "Fiona", "Gary", "Harry")
ADJECTIVES = ("kind", "red", "green", "big", "round", "blue", "cold", "nice", "quiet", "rough", "smart", "young")


def write_proofwriter_theories(folder, n_theories: int, sizes, seed: int) -> None:
    """ProofWriter-format rows (``meta-*.jsonl``) in ``folder``: theories of m statements (m
    cycling through ``sizes``, half facts "Name is adj." and half rules "If someone is A then
    they are B."), each with one depth-0 question (a fact) and one depth-1 question (a rule
    applied to a fact), plus one with negation as failure that loaders drop."""
    import json
    import random

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = {"train": [], "dev": [], "test": []}
    for t in range(n_theories):
        m = sizes[t % len(sizes)]
        n_facts = max(1, m // 2)
        facts = [(rng.choice(NAMES), rng.choice(ADJECTIVES)) for _ in range(n_facts)]
        rules = [(rng.choice([a for _, a in facts]), rng.choice(ADJECTIVES)) for _ in range(m - n_facts)]
        triples = {f"triple{i + 1}": {"text": f"{n} is {a}."} for i, (n, a) in enumerate(facts)}
        rule_rows = {f"rule{i + 1}": {"text": f"If someone is {a} then they are {b}."}
                     for i, (a, b) in enumerate(rules)}
        k = rng.randrange(n_facts)
        j = next((i for i, (a, _) in enumerate(rules) if a == facts[k][1]), None)
        questions = {"Q1": {"question": f"{facts[k][0]} is {facts[k][1]}.", "answer": True, "QDep": 0, "QLen": 1,
                            "proofs": f"[(triple{k + 1})]"},
                     "Q2": {"question": f"{facts[0][0]} is not smart.", "answer": True, "QDep": 0, "QLen": 1,
                            "proofs": "[(NAF)]"}}
        if j is not None:
            questions["Q3"] = {"question": f"{facts[k][0]} is {rules[j][1]}.", "answer": rng.random() < 0.5,
                               "QDep": 1, "QLen": 2, "proofs": f"[(((triple{k + 1}) -> rule{j + 1}))]"}
        theory = " ".join(v["text"] for v in [*triples.values(), *rule_rows.values()])
        rows[("train", "dev", "test")[t % 3]].append({"id": f"T{t}", "theory": theory, "triples": triples,
                                                      "rules": rule_rows, "questions": questions})
    for split, items in rows.items():
        (folder / f"meta-{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
