"""The embedded model: a small GPT-NeoX trained by this project, shipped as package data.

Each revision (``step0`` ... ``main``) is a self-contained Hugging Face model directory
under ``revisions/`` (config, fp16 safetensors, tokenizer), so it loads offline and can be
served by a self-hosted NDIF under the same path.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent
REVISIONS_DIR = ROOT / "revisions"
EMBEDDED_NAME = "embedded"


def revisions() -> list[str]:
    """Revision names in training order (``step0`` first, ``main`` last)."""
    if not REVISIONS_DIR.is_dir():
        return []
    names = [p.name for p in REVISIONS_DIR.iterdir() if (p / "config.json").is_file()]
    return sorted(names, key=lambda n: (n == "main", int(n[4:]) if n.startswith("step") else 0))


def revision_path(revision: str = "main") -> Path:
    path = REVISIONS_DIR / revision
    if not (path / "config.json").is_file():
        have = ", ".join(revisions()) or "none (run scripts/train_embedded.py)"
        raise FileNotFoundError(f"embedded model has no revision {revision!r}; available: {have}")
    return path


def card() -> dict:
    """Measured accuracies per task per revision (written by the training script)."""
    path = ROOT / "card.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def training_meta(revision: str = "main") -> dict:
    """How a revision was trained (step, task mix, seed), as the training script recorded it."""
    path = REVISIONS_DIR / revision / "training_meta.json"
    return json.loads(path.read_text()) if path.is_file() else {}


@lru_cache(maxsize=1)
def load_tokenizer():
    """The embedded word-level tokenizer (same for every revision)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(revision_path(revisions()[-1] if revisions() else "main")))
