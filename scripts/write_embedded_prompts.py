"""Write the exemplar files shipped for the embedded prompt style (tasks/prompts/embedded/),
one per prompt type of Rai & Yao's repository except mult_only (no × in that vocabulary), in
the repository's layout: a question line, the solution's lines, the answer line, a blank line.

    python scripts/write_embedded_prompts.py     # deterministic; rewrites the files

Two exemplars each (the embedded model's context is 256 tokens). The exemplars of every type
are the same two problems (add_only: two problems whose steps all add), so types differ in
format only, as the repository's files do.
"""
from __future__ import annotations

import random
from pathlib import Path

from nnsight_reasoning.tasks.cot import sample_problem
from nnsight_reasoning.tasks.words import NAMES

OUT = Path(__file__).resolve().parents[1] / "tasks" / "prompts" / "embedded"


def block(question: str, lines: list[str], answer: str) -> str:
    body = "\n".join([f"Q : {question}", "A : " + (lines[0] if lines else f"The result is {answer} ."),
                      *lines[1:], *([f"The result is {answer} ."] if lines else [])])
    return body + "\n"


def main() -> None:
    rng = random.Random(2024)
    problems = [sample_problem(rng, 2, 20) for _ in range(2)]
    adds = []
    while len(adds) < 2:
        p = sample_problem(rng, 2, 20)
        if all("+" in s.equation_only for s in p.steps):
            adds.append(p)
    wrong = random.Random(7)
    files: dict[str, list[str]] = {}
    for name, variant, probs in (("cot_prompt", "full", problems), ("text_only", "text_only", problems),
                                 ("equation_only", "equation_only", problems), ("add_only", "full", adds)):
        files[name] = [block(p.question, [f"{getattr(s, variant)} ." for s in p.steps], p.answer) for p in probs]
    # incorrect labels: every stated result replaced, by another number or (out of distribution) by a name
    for name, pick in (("incorrect_label", lambda r: str(wrong.choice([k for k in range(2, 40) if str(k) != r]))),
                       ("incorrect_ood_label", lambda r: wrong.choice(NAMES))):
        blocks = []
        for p in problems:
            bad = [pick(s.result) for s in p.steps]
            lines = [f"{s.full.rsplit(' = ', 1)[0]} = {b} ." for s, b in zip(p.steps, bad)]
            blocks.append(block(p.question, lines, bad[-1]))
        files[name] = blocks
    files["repeat"] = [block(p.question, [p.question], p.answer) for p in problems]
    files["standard"] = [block(p.question, [], p.answer) for p in problems]
    OUT.mkdir(parents=True, exist_ok=True)
    for name, blocks in files.items():
        (OUT / f"{name}.txt").write_text("\n".join(blocks), encoding="utf-8")
        print(f"wrote {OUT / name}.txt")


if __name__ == "__main__":
    main()
