"""Load and save trained rankers: weights in safetensors (no pickles), spec and config as text.

`load_run(run_dir)` is what export and serving call; it rebuilds the exact model from the run
directory's `config.yaml` + `feature_spec.json` and loads `model.safetensors` strictly.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from llm4msr.config import DataConfig, Settings, dump_config, load_config
from llm4msr.errors import MissingInputError, UserError
from llm4msr.secrets import redact_tree
from ranker.features import SPEC_FILE, FeatureSpec
from ranker.model import RankerModel, build_model

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.parquet"
VALID_PREDICTIONS_FILE = "valid_predictions.parquet"  # best model on the validation split (selection)


class WeightsMismatchError(UserError, ValueError):
    """A weights file from another model layout (other code or config): a clear error, not a traceback."""


def save_weights(model: nn.Module, path: str | Path) -> None:
    """State dict (parameters + buffers such as running statistics) as safetensors."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path))


def load_weights(model: nn.Module, path: str | Path) -> None:
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"weights file {path} does not exist")
    state = load_file(str(path))
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    resized = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or resized:
        raise WeightsMismatchError(
            f"{path}: weights do not match the model this code builds from the run's config "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]}, other shapes {resized[:3]}); the run was "
            "made by other code (run.json: provenance.git_revision): retrain it, or load it with that code"
        )
    model.load_state_dict(state)


def load_run(run_dir: str | Path) -> tuple[RankerModel, FeatureSpec]:
    """(model in eval mode, feature spec) of a training run directory."""
    run_dir = Path(run_dir)
    for name in (CONFIG_FILE, SPEC_FILE, WEIGHTS_FILE):
        if not (run_dir / name).is_file():
            raise MissingInputError(f"{run_dir} is not a complete training run: {name} is missing")
    settings = load_run_settings(run_dir)
    spec = FeatureSpec.load(run_dir / SPEC_FILE)
    model = build_model(spec, settings.train)
    load_weights(model, run_dir / WEIGHTS_FILE)
    model.eval()
    return model, spec


def load_run_settings(run_dir: str | Path) -> Settings:
    return load_config(Path(run_dir) / CONFIG_FILE)


def run_config_text(settings: Settings, data: DataConfig | None, data_dir: str | Path) -> str:
    """A run's config.yaml: the settings it trained with, the `data` section being the dataset's
    own build config (`data`, from its manifest) rather than the run's, which is only the default
    unless the dataset was built from the same config. Without a recorded build config the `data`
    section is left out (with a comment) instead of showing defaults the run never used."""
    if data is not None:
        return dump_config(settings.model_copy(update={"data": data}, deep=True))
    tree = redact_tree(settings.model_dump(mode="json"))  # no password of store.url in a run
    tree.pop("data")
    return (
        f"# data: not recorded: dataset {data_dir} has no source.config in its manifest.json (hand-built "
        "tables, or built before manifests recorded it); run.json has its path, version and source\n"
        + yaml.safe_dump(tree, sort_keys=False)
    )


def example_inputs(spec: FeatureSpec, batch: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """Valid random inputs named as in contract 4 (for export tracing and parity checks).

    Half the rows have user knowledge; K is at least 1 even for --no-llm models.
    """
    g = torch.Generator().manual_seed(seed)
    k = max(spec.knowledge_dim, 1)
    cols = [torch.randint(0, f.vocab_size, (batch,), generator=g) for f in spec.features]
    return {
        "sparse_ids": torch.stack(cols, dim=1).to(torch.int64),
        "user_knowledge": torch.randn(batch, k, generator=g),
        "user_has_knowledge": (torch.arange(batch) % 2 == 0).to(torch.float32),
        "scenario_knowledge": torch.randn(batch, k, generator=g),
    }
