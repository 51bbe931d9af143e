"""The multiple-choice measure (binding-iclr's MCQ task): options swapped by their binding IDs."""
from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from ... import backend
from ...backend import resid as _br
from ...errors import UsageError
from ...runner import Run
from ...tasks.mcq import McqContexts
from ._common import _freeze_arg


def _mcq(run: Run, contexts: McqContexts, max_width: int, freeze: bool = True) -> xr.Dataset:
    """binding-iclr's MCQ test (``mcq_parallel_exchange``, ``coref/data_collection.py:962-1076``;
    ``run_mcq``, ``scripts/run_experiment.py:813-834``, ``max_width=5``). For width w = 1 …
    ``max_width``, the residual stream (every depth) of the last w tokens of each option's line
    — up to and including the first token after it, the repository's exclusive end — is
    overwritten by the source context's, which states the same options with the two letters
    exchanged; w = 0 is the clean run. Queries: each option's review; answers: the
    log-probabilities (full vocabulary) of the two letters at the last position. If the lines'
    last tokens carry which letter goes with which option, the model answers the *other*
    letter: ``mcq_swap_accuracy`` (w) is the share of queries where it does (argmax);
    ``mcq_balanced_swap_accuracy`` (w) scores it as the repository (``reduce_balanced_acc(t, [1,
    0])``, notebook cell 42: each letter's log-probability minus its median over the queries and
    contexts of that width, then the argmax). The source row reads the same review (the options
    come first, so its edited positions are the repository's). With ``freeze`` the context (the
    option lines, up to the first token after them) keeps its clean values at every depth
    before the edits, as the repository's runner does (``run_intervened_model``, dependent
    start = the context section's end), so an edit of one line does not reach the other's
    tokens; only the review and the answer read it."""
    model = run.model
    items = [(i, q) for i in range(len(contexts)) for q in (0, 1)]
    ctxs = contexts.contexts
    encoded = backend.tokenize_with_offsets(model, [ctxs[i].text(q) for i, q in items]
                                            + [ctxs[i].text(q, swapped=True) for i, q in items])
    clean, source = encoded[:len(items)], encoded[len(items):]
    windows = []  # per item and statement: (first token of the line, the first token after it)
    for (i, q), (ids, spans), (sids, _) in zip(items, clean, source):
        if len(sids) != len(ids):
            raise UsageError("exchanging the letters changes the prompt's token length for this tokenizer; "
                             "use letters of one token each")
        lines = []
        for a, b in ctxs[i].statement_spans():
            first = next(t for t, (x, y) in enumerate(spans) if y > a)
            after = next(t for t, (x, y) in enumerate(spans) if y > b)  # the token holding the line's end
            if after - max_width + 1 < first:
                raise UsageError(f"max_width={max_width} reaches past the start of an option's line ({after - first + 1} "
                                 f"tokens with the next one) for this tokenizer; use a smaller max_width")
            lines.append(after)
        windows.append(lines)
    cand = [backend.answer_tokens(model, list(ctxs[i].labels), "letter") for i, _ in items]
    W = max_width
    logp = np.zeros((W + 1, len(items), 2))
    for chunk in run.steps(run.batches([len(ids) for ids, _ in clean], rows_per_item=2 + W), "mcq exchange"):
        ids, answers, e_rows, e_src, e_pos, frozen = [], [], [], [], [], []
        for k in chunk:  # the clean row, the source row, then one edited row per width
            base = len(ids)
            ids += [clean[k][0], source[k][0]] + [clean[k][0]] * W
            answers += [cand[k]] * (2 + W)
            for w in range(1, W + 1):
                # the context section ends where the last option's line does (its window's end token)
                frozen.append((base + 1 + w, base, windows[k][-1]))
                for end in windows[k]:
                    for pos in range(end - w + 1, end + 1):
                        e_rows.append(base + 1 + w)
                        e_src.append(base + 1)
                        e_pos.append(pos)
        lp = run.call(_br.edited_scores, torch.tensor(ids), torch.tensor(answers), torch.tensor(e_rows),
                      torch.tensor(e_src), torch.tensor(e_pos),
                      freeze=_freeze_arg(frozen, len(ids[0])) if freeze else None).log_probs.numpy()
        for j, k in enumerate(chunk):
            row = j * (2 + W)
            logp[0, k] = lp[row]
            logp[1:, k] = lp[row + 2: row + 2 + W]
    logp = logp.reshape(W + 1, len(contexts), 2, 2).transpose(0, 2, 3, 1)  # (width, query, answer, prompt)
    best = logp.argmax(axis=2)  # (width, query, prompt)
    swapped = best == (1 - np.arange(2))[None, :, None]
    # reduce_balanced_acc: per width and letter, the median over queries and contexts subtracted
    balanced = (logp - np.median(logp, axis=(1, 3), keepdims=True)).argmax(axis=2) == (1 - np.arange(2))[None, :, None]
    return xr.Dataset(
        {"mcq_logprob": (("width", "query", "answer", "prompt"), logp,
                         {"long_name": "log-probability of each statement's letter (full vocabulary)", "units": "nats"}),
         "mcq_swapped": (("width", "query", "prompt"), swapped.astype(np.int8),
                         {"long_name": "the other statement's letter wins (what the exchanged lines predict)"}),
         "mcq_swap_accuracy": ("width", swapped.mean(axis=(1, 2)),
                               {"long_name": "share of queries answered with the exchanged letter"}),
         "mcq_balanced_swap_accuracy": ("width", balanced.mean(axis=(1, 2)),
                                        {"long_name": "binding-iclr's balanced accuracy of the exchanged letter (each "
                                                      "letter's median over queries and contexts subtracted)"}),
         "control_accuracy": ((), float((best[0] == np.arange(2)[:, None]).mean()),
                              {"long_name": "clean run: the queried option's own letter wins"})},
        coords={"width": np.arange(W + 1), "query": np.array(["option 0", "option 1"], dtype=object),
                "answer": np.array(["L0", "L1"], dtype=object), "prompt": np.arange(len(contexts)),
                "text": ("prompt", [c.text(0) for c in ctxs])},
        attrs={"method": "binding_ids", "measure": "mcq", "metric": "accuracy", "max_width": W,
               "freeze_context": int(freeze)})
