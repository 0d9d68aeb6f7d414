"""One export path for every model: training run -> ONNX file + manifest, published only if parity holds.

`export_run(run_dir, out_dir, cfg)` loads a training run (contract 4), exports the model with the
dynamo exporter (falling back to the legacy TorchScript exporter when dynamo fails or its graph
fails parity), reads the graph's actual inputs (a --no-llm model may drop the knowledge inputs),
checks onnxruntime against PyTorch on batches of 1, 2, 7 and 512 rows (one scenario and mixed
scenarios, with fallback-knowledge rows), both measured against the model's float64 evaluation
(`check_parity`: the tolerance is sized by the model's own float32 rounding, see there), and
writes the model directory (contract 5, layout in `ranker.serving.artifact`) atomically: a model that
fails parity leaves nothing at `out_dir`.

Optional float16 / int8 variants are written under `variants/` with their size, their largest
score difference and their AUC change on (a sample of) the validation split.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from llm4msr.atomic import atomic_directory, sha256_file, write_json_atomic
from llm4msr.config import ExportConfig
from llm4msr.errors import MissingInputError, OutputExistsError, UserError
from llm4msr.provenance import provenance
from ranker.serving import artifact as A

log = logging.getLogger(__name__)


class ExportError(UserError, ValueError):
    """The model cannot be exported (both exporters failed, bad run directory, ...)."""


class ParityError(ExportError):
    """onnxruntime and PyTorch disagree by more than the tolerance; nothing was published."""


@dataclass
class ExportSource:
    """Everything the exporter needs, independent of where it came from (a run dir or a test)."""

    model: nn.Module
    layout: A.FeatureLayout
    vocabs: dict[str, dict[str, int]]
    users: A.LookupTable
    items: A.LookupTable
    knowledge_dim: int
    use_llm: bool = True
    knowledge: dict[str, Any] = field(default_factory=dict)  # family, snapshot_id, ...
    feature_spec: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)  # training run provenance (run.json + path)
    metrics: dict[str, Any] = field(default_factory=dict)
    scenarios: list[str] = field(default_factory=list)
    # Validation rows as model inputs + labels, for the AUC change of float16/int8 variants.
    valid: tuple[dict[str, np.ndarray], np.ndarray] | None = None
    # Real (user vectors, scenario vectors) from the run's snapshot: parity batches draw their
    # knowledge from these, so the check runs on the input distribution the model will serve.
    # Without them (tests, --no-llm) knowledge rows are standard normal.
    knowledge_pool: tuple[np.ndarray, np.ndarray] | None = None


@dataclass
class ExportReport:
    model_dir: Path
    exporter: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    parity: dict[str, Any]
    variants: dict[str, dict[str, Any]]
    seconds: float
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def headline(self) -> str:
        """The export as one log line: where, how, and the parity verdict with its worst difference."""
        return (
            f"exported {self.model_dir} with the {self.exporter} exporter in {self.seconds:.1f}s; parity "
            f"{'passed' if self.parity['passed'] else 'FAILED'} over {len(self.parity['cases'])} batches "
            f"({parity_line(self.parity)})"
        )

    def summary(self) -> str:
        """The full report `llm4msr export` prints: inputs, parity and each variant on its own line."""
        lines = [
            f"exported {self.model_dir} with the {self.exporter} exporter in {self.seconds:.1f}s",
            f"inputs: {', '.join(i['name'] for i in self.inputs)}",
            f"parity: {parity_line(self.parity)} over {len(self.parity['cases'])} batches "
            f"-> {'passed' if self.parity['passed'] else 'FAILED'}",
        ]
        for name, v in self.variants.items():
            auc = "" if v.get("auc_delta") is None else f", AUC change {v['auc_delta']:+.5f}"
            lines.append(
                f"variant {name}: {v['bytes'] / 1e6:.2f} MB, max |diff| {v['max_abs_diff']:.2e}{auc}"
            )
        return "\n".join(lines)


def parity_line(parity: dict[str, Any]) -> str:
    """One line for logs and errors: both differences and the tolerance they were held to."""
    line = f"max |onnx - torch| = {parity['max_abs_diff']:.2e}"
    if parity.get("reference") == "float64":
        line += (
            f", max |onnx - float64| = {parity['max_abs_error']:.2e} (tolerance {parity['tolerance']:.2e} = "
            f"atol {parity['atol']:.0e} + {parity['noise_factor']:g} x float32 noise {parity['float32_noise']:.2e})"
        )
    else:
        line += f" (tolerance {parity.get('tolerance', parity['atol']):.0e}, no float64 reference)"
    return line


# ---------------------------------------------------------------------------- inputs
def make_inputs(
    source: ExportSource, batch: int, *, mixed: bool, fallback: str, seed: int
) -> dict[str, np.ndarray]:
    """A realistic random batch: real users/items (plus unknown ids), one or many scenarios.

    fallback: "none" (every row has knowledge), "some" (about a third fall back) or "all".
    """
    rng = np.random.default_rng(seed)
    asm = A.FeatureAssembler(source.layout, source.vocabs, source.users, source.items)
    pool_u = source.users.ids or ["<none>"]
    pool_i = source.items.ids or ["<none>"]
    users = [pool_u[k] if k >= 0 else "__unknown__" for k in rng.integers(-1, len(pool_u), batch)]
    items = [pool_i[k] if k >= 0 else "__unknown__" for k in rng.integers(-1, len(pool_i), batch)]
    scen_ids = source.scenarios or list(source.vocabs.get(source.layout.scenario_feature, {})) or ["__none__"]
    if mixed:
        scen = [scen_ids[k] for k in rng.integers(0, len(scen_ids), batch)]
    else:
        scen = [scen_ids[int(rng.integers(0, len(scen_ids)))]] * batch
    sparse = asm.build_rows(users, scen, items)
    # Also touch random vocabulary indices (every embedding row is reachable), user-side only so
    # the scenario column keeps its single/mixed meaning.
    if batch >= 4:
        for col in source.layout.columns("item"):
            sparse[::4, col] = rng.integers(0, source.layout.features[col].vocab_size, len(sparse[::4]))
    k = max(int(source.knowledge_dim), 1)
    has = {"none": np.ones(batch), "all": np.zeros(batch), "some": (rng.random(batch) > 0.33).astype(float)}[
        fallback
    ]
    if source.knowledge_pool is not None:
        pool_uk, pool_sk = source.knowledge_pool
        uk = pool_uk[rng.integers(0, len(pool_uk), batch)].astype(np.float32)
        sk = pool_sk[rng.integers(0, len(pool_sk), batch)].astype(np.float32)
    else:
        uk = rng.normal(0, 1, (batch, k)).astype(np.float32)
        sk = rng.normal(0, 1, (batch, k)).astype(np.float32)
    uk = uk * has[:, None].astype(np.float32)
    return {
        "sparse_ids": sparse.astype(np.int64),
        "user_knowledge": uk,
        "user_has_knowledge": has.astype(np.float32),
        "scenario_knowledge": sk,
    }


def torch_scores(model: nn.Module, inputs: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()})
    return out.detach().cpu().numpy().astype(np.float32).reshape(-1)


def onnx_scores(session: Any, inputs: dict[str, np.ndarray]) -> np.ndarray:
    names = [i.name for i in session.get_inputs()]
    return np.asarray(session.run(None, {n: inputs[n] for n in names})[0], dtype=np.float32).reshape(-1)


def parity_cases(cfg: ExportConfig) -> list[tuple[int, bool, str]]:
    """(batch, mixed scenarios, fallback) for every check: all batch sizes x single/mixed, plus
    all-fallback batches, so each batch size sees rows with and without knowledge."""
    cases = []
    for b in cfg.parity_batch_sizes:
        cases.append((b, False, "none" if b == 1 else "some"))
        cases.append((b, True, "all" if b == 1 else "some"))
    cases.append((max(cfg.parity_batch_sizes), True, "all"))
    return cases


# Parity is judged against the model's own float64 evaluation (same weights, inputs cast exactly), not
# against PyTorch's float32 scores: onnxruntime and PyTorch add the same terms in other orders (MLAS vs
# oneDNN/MKL kernels, fused ops, AVX2 vs AVX-512 blockings), and the float32 error of a sum scales
# with the size of its terms, not of its result. A model whose logits come out of large cancelling
# terms (hundreds) can differ by more than 1e-5 between two correct float32 evaluations. The
# allowance is measured, not guessed: PyTorch float32's own distance from float64 on the same rows.
PARITY_NOISE_FACTOR = 8.0  # ORT's worst error vs PyTorch's: measured <= 4x on an ill-conditioned model
PARITY_MAX_TOLERANCE_FACTOR = 100.0  # beyond atol x this, float32 cannot tell a bug from rounding


def float64_copy(model: nn.Module) -> nn.Module:
    """A float64 copy of the model: the reference both float32 evaluations are measured against."""
    import copy

    return copy.deepcopy(model).double().eval()


def torch_scores64(model64: nn.Module, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Scores of a float64 copy; float32 inputs are widened (exactly), integer ids kept."""
    feed = {
        k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64 if v.dtype.kind == "f" else v.dtype))
        for k, v in inputs.items()
    }
    with torch.no_grad():
        out = model64(**feed)
    return out.detach().cpu().numpy().astype(np.float64).reshape(-1)


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape or not np.isfinite(a).all():
        return float("inf")
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


def check_parity(
    model: nn.Module, onnx_path: Path, source: ExportSource, cfg: ExportConfig
) -> dict[str, Any]:
    """onnxruntime vs PyTorch on every parity case (see PARITY_NOISE_FACTOR for why).

    Passes when every row has |onnxruntime - PyTorch float32| <= atol (the plain gate), or
    |onnxruntime - float64| <= tolerance = atol + PARITY_NOISE_FACTOR * noise, where noise is the
    largest |PyTorch float32 - float64| over all cases. A well-conditioned model has noise ~1e-7, so
    its gate stays at about atol; the tolerance may not exceed atol * PARITY_MAX_TOLERANCE_FACTOR
    (beyond that the result says the model is unstable in float32). Without a float64 reference (a
    model that cannot run in float64) only the plain gate applies.
    """
    sess = A.open_session(onnx_path, 1, 1)
    try:
        model64: nn.Module | None = float64_copy(model)
        reference, reference_error = "float64", None
    except Exception as exc:  # noqa: BLE001 - any failure: fall back to the plain float32 comparison
        model64, reference, reference_error = None, "float32", f"{type(exc).__name__}: {exc}"[:500]
    results = []
    for i, (b, mixed, fb) in enumerate(parity_cases(cfg)):
        x = make_inputs(source, b, mixed=mixed, fallback=fb, seed=cfg.parity_seed + i)
        ref, got = torch_scores(model, x), onnx_scores(sess, x)
        case: dict[str, Any] = {
            "batch": b,
            "scenarios": "mixed" if mixed else "single",
            "fallback": fb,
            "max_abs_diff": _max_abs(got, ref),  # onnxruntime vs PyTorch float32
            "shape": list(got.shape),
        }
        if model64 is not None:
            try:
                exact = torch_scores64(model64, x)
            except Exception as exc:  # noqa: BLE001 - e.g. an op without a float64 kernel
                model64, reference, reference_error = None, "float32", f"{type(exc).__name__}: {exc}"[:500]
            else:
                case["max_abs_error"] = _max_abs(got, exact)  # onnxruntime vs float64
                case["float32_noise"] = _max_abs(ref, exact)  # PyTorch float32 vs float64
        results.append(case)
    worst_diff = max(r["max_abs_diff"] for r in results)
    out: dict[str, Any] = {
        "atol": cfg.parity_atol,
        "max_abs_diff": worst_diff,
        "reference": reference,
        "dtype": "float32",
        "cases": results,
    }
    if model64 is None:
        for r in results:  # a reference that failed part-way: no half-filled columns
            r.pop("max_abs_error", None)
            r.pop("float32_noise", None)
        out.update(tolerance=cfg.parity_atol, passed=bool(worst_diff <= cfg.parity_atol))
        out["reference_error"] = reference_error
        return out
    noise = max(r["float32_noise"] for r in results)
    worst = max(r["max_abs_error"] for r in results)
    tolerance = cfg.parity_atol + PARITY_NOISE_FACTOR * noise
    cap = cfg.parity_atol * PARITY_MAX_TOLERANCE_FACTOR
    out.update(
        max_abs_error=worst,
        float32_noise=noise,
        noise_factor=PARITY_NOISE_FACTOR,
        tolerance=tolerance,
        passed=bool(worst_diff <= cfg.parity_atol or worst <= tolerance <= cap),
    )
    if not out["passed"] and tolerance > cap:
        out["reason"] = (
            f"the model is numerically unstable in float32: PyTorch's own float32 scores differ from "
            f"float64 by {noise:.2e}, so a tolerance of {tolerance:.2e} (above {cap:.0e}) would be needed "
            "and an export bug could not be told from rounding; retrain (check for logits of very large "
            "magnitude) or raise export.parity_atol knowingly"
        )
    return out


# ---------------------------------------------------------------------------- exporters
def _example(source: ExportSource, cfg: ExportConfig) -> dict[str, torch.Tensor]:
    x = make_inputs(source, cfg.example_batch, mixed=True, fallback="some", seed=cfg.parity_seed + 10_000)
    return {k: torch.from_numpy(v) for k, v in x.items()}


def _export_dynamo(model: nn.Module, example: dict[str, torch.Tensor], path: Path, opset: int) -> None:
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    shapes = {name: {0: batch} for name in example}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            model,
            (),
            kwargs=example,
            dynamo=True,
            dynamic_shapes=shapes,
            external_data=False,
            opset_version=opset,
            input_names=list(example),
            output_names=["score"],
            verbose=False,
        )
        if prog is None:
            raise ExportError("the dynamo exporter returned no program")
        prog.save(str(path), external_data=False)


def _export_legacy(model: nn.Module, example: dict[str, torch.Tensor], path: Path, opset: int) -> None:
    names = list(example)
    axes = {n: {0: "batch"} for n in [*names, "score"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            tuple(example.values()),
            str(path),
            dynamo=False,
            input_names=names,
            output_names=["score"],
            dynamic_axes=axes,
            opset_version=opset,
            export_params=True,
            do_constant_folding=True,
        )


EXPORTERS: dict[str, Callable[[nn.Module, dict[str, torch.Tensor], Path, int], None]] = {
    "dynamo": _export_dynamo,
    "legacy": _export_legacy,
}


def _check_graph(path: Path, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
    """The batch dimension must be symbolic and the output a [B] float score; no side data file."""
    side = [p.name for p in path.parent.iterdir() if p.name.startswith(path.name) and p.name != path.name]
    if side:
        raise ExportError(f"{path}: exporter wrote external data {side}; weights must be inside the file")
    if "sparse_ids" not in [i["name"] for i in inputs]:
        raise ExportError(f"{path}: graph has no 'sparse_ids' input (inputs: {[i['name'] for i in inputs]})")
    unexpected = [i["name"] for i in inputs if i["name"] not in A.ALL_INPUTS]
    if unexpected:
        raise ExportError(
            f"{path}: unexpected graph inputs {unexpected}, expected a subset of {A.ALL_INPUTS}"
        )
    for io in (*inputs, *outputs):
        if io["shape"] and isinstance(io["shape"][0], int):
            raise ExportError(
                f"{path}: {io['name']} has a fixed batch dimension {io['shape'][0]}, expected dynamic"
            )
    if len(outputs) != 1 or outputs[0]["dtype"] != "float" or len(outputs[0]["shape"]) != 1:
        raise ExportError(f"{path}: expected one float output of shape [batch], got {outputs}")


# ---------------------------------------------------------------------------- variants
def _auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """`ranker.metrics.auc`, None (JSON null) when the rows hold one class."""
    from ranker.metrics import auc

    value = auc(labels, scores)
    return None if np.isnan(value) else value


def _score_batched(sess: Any, inputs: dict[str, np.ndarray], batch: int = 4096) -> np.ndarray:
    n = len(inputs["sparse_ids"])
    return np.concatenate(
        [onnx_scores(sess, {k: v[a : a + batch] for k, v in inputs.items()}) for a in range(0, n, batch)]
        or [np.zeros(0, np.float32)]
    )


def _make_variant(kind: str, src: Path, dst: Path) -> None:
    import onnx

    if kind == "float16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
        onnx.save(model, str(dst))
    elif kind == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    else:  # pragma: no cover - config validation prevents it
        raise ExportError(f"unknown variant {kind!r}")


def build_variants(tmp: Path, source: ExportSource, cfg: ExportConfig) -> dict[str, dict[str, Any]]:
    """float16 / int8 files with size, largest score change and AUC change on validation rows."""
    if not cfg.variants:
        return {}
    (tmp / A.VARIANTS_DIR).mkdir()
    base = A.open_session(tmp / A.MODEL_FILE, 1, 1)
    probe = make_inputs(source, 512, mixed=True, fallback="some", seed=cfg.parity_seed + 20_000)
    base_probe = onnx_scores(base, probe)
    base_auc = None
    if source.valid is not None:
        vx, vy = source.valid
        base_auc = _auc(vy, _score_batched(base, vx))
    out: dict[str, dict[str, Any]] = {}
    for kind in cfg.variants:
        rel = f"{A.VARIANTS_DIR}/model.{kind}.onnx"
        _make_variant(kind, tmp / A.MODEL_FILE, tmp / rel)
        sess = A.open_session(tmp / rel, 1, 1)
        meta: dict[str, Any] = {
            "file": rel,
            "bytes": (tmp / rel).stat().st_size,
            "sha256": sha256_file(tmp / rel),
            "max_abs_diff": float(np.max(np.abs(onnx_scores(sess, probe) - base_probe))),
            "auc": None,
            "auc_float32": base_auc,
            "auc_delta": None,
            "eval_rows": 0,
        }
        if source.valid is not None:
            vx, vy = source.valid
            meta["auc"] = _auc(vy, _score_batched(sess, vx))
            meta["eval_rows"] = int(len(vy))
            if meta["auc"] is not None and base_auc is not None:
                meta["auc_delta"] = meta["auc"] - base_auc
        out[kind] = meta
        log.info(
            "variant %s: %.2f MB, max |diff| %.2e, AUC change %s",
            kind,
            meta["bytes"] / 1e6,
            meta["max_abs_diff"],
            meta["auc_delta"],
        )
    return out


# ---------------------------------------------------------------------------- the export path
def _attempt_detail(attempt: dict[str, Any]) -> str:
    if "max_abs_diff" not in attempt:
        return attempt["error"][:300]
    text = f"max |diff| {attempt['max_abs_diff']:.3e}"
    if attempt.get("max_abs_error") is not None:
        text += f", max |onnx - float64| {attempt['max_abs_error']:.3e}"
    text += f" > tolerance {attempt['tolerance']:.3e}"
    return text + (f" ({attempt['reason']})" if attempt.get("reason") else "")


def export_source(
    source: ExportSource, out_dir: str | Path, cfg: ExportConfig, *, overwrite: bool = False
) -> ExportReport:
    """Export, check parity, write the model directory atomically.

    Args:
        source: the model and everything the manifest needs (`source_from_run`, or a test's own).
        out_dir: the model directory to write (contract 5); nothing appears there unless parity holds.
        cfg: exporter order, opset, parity batches and tolerance, float16/int8 variants.
        overwrite: replace an existing `out_dir` (otherwise `OutputExistsError`).

    Returns:
        ExportReport: the exporter used, the parity record and the variants written.

    Raises:
        ParityError: no exporter produced a graph that passes `check_parity` (nothing published).
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise OutputExistsError(f"{out_dir} already exists (pass --overwrite to replace it)")
    model = source.model.eval()
    example = _example(source, cfg)
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._dynamo"):
        # The exporters' INFO chatter off, without lowering a stricter level set by the caller's
        # logging setup (the CLI shows torch from ERROR: llm4msr.logs).
        lib_log = logging.getLogger(noisy)
        if lib_log.getEffectiveLevel() < logging.WARNING:
            lib_log.setLevel(logging.WARNING)
    order = {"auto": ["dynamo", "legacy"], "dynamo": ["dynamo"], "legacy": ["legacy"]}[cfg.exporter]
    attempts: list[dict[str, Any]] = []
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        onnx_path = tmp / A.MODEL_FILE
        chosen = None
        for name in order:
            work = tmp / f".try-{name}"
            work.mkdir()
            path = work / A.MODEL_FILE
            try:
                EXPORTERS[name](model, example, path, cfg.opset)
                inputs, outputs = A.graph_io(path)
                _check_graph(path, inputs, outputs)
                parity = check_parity(model, path, source, cfg)
            except Exception as exc:  # noqa: BLE001 - any exporter failure means: try the next one
                log.warning("%s exporter failed: %s", name, str(exc).splitlines()[0] if str(exc) else exc)
                attempts.append(
                    {"exporter": name, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
                )
                continue
            attempts.append(
                {
                    "exporter": name,
                    "ok": parity["passed"],
                    "max_abs_diff": parity["max_abs_diff"],
                    "max_abs_error": parity.get("max_abs_error"),
                    "tolerance": parity["tolerance"],
                    **({"reason": parity["reason"]} if "reason" in parity else {}),
                }
            )
            if parity["passed"]:
                path.rename(onnx_path)
                chosen = (name, inputs, outputs, parity)
                break
            log.warning("%s exporter: parity failed: %s", name, parity.get("reason") or parity_line(parity))
        for name in order:
            d = tmp / f".try-{name}"
            if d.exists():
                for p in d.iterdir():
                    p.unlink()
                d.rmdir()
        if chosen is None:
            detail = "; ".join(f"{a['exporter']}: {_attempt_detail(a)}" for a in attempts)
            cls = ParityError if any("max_abs_diff" in a for a in attempts) else ExportError
            raise cls(
                f"refusing to publish {out_dir}: no exporter produced a model that agrees with PyTorch "
                f"(export.parity_atol {cfg.parity_atol:.0e}; {detail})"
            )
        exporter, inputs, outputs, parity = chosen
        dropped = [n for n in A.ALL_INPUTS if n not in [i["name"] for i in inputs]]
        write_json_atomic(tmp / A.VOCABS_FILE, source.vocabs)
        lookups = {
            "users": source.users.write(tmp / A.USERS_FILE),
            "items": source.items.write(tmp / A.ITEMS_FILE),
            "vocabs": {"file": A.VOCABS_FILE, "sha256": sha256_file(tmp / A.VOCABS_FILE)},
        }
        variants = build_variants(tmp, source, cfg)
        manifest = {
            "format_version": A.FORMAT_VERSION,
            "model": {
                "file": A.MODEL_FILE,
                "bytes": onnx_path.stat().st_size,
                "sha256": sha256_file(onnx_path),
                "opset": cfg.opset,
                "external_data": False,
            },
            "exporter": exporter,
            "export_attempts": attempts,
            "inputs": inputs,
            "outputs": outputs,
            "dropped_inputs": dropped,
            "layout": source.layout.to_dict(),
            "feature_spec": source.feature_spec,
            "scenarios": list(source.scenarios),
            "lookups": lookups,
            "knowledge": {
                "use_llm": source.use_llm,
                "dimension": int(source.knowledge_dim),
                **source.knowledge,
            },
            "training_run": source.run,
            "metrics": source.metrics,
            "parity": parity,
            "variants": variants,
            "provenance": provenance("torch", "onnx", "onnxruntime", "onnxscript"),
        }
        write_json_atomic(tmp / A.MANIFEST_FILE, manifest)
        # Last check before publishing: the directory loads the way serving will load it.
        A.load_artifact(tmp)
    report = ExportReport(
        model_dir=out_dir,
        exporter=exporter,
        inputs=inputs,
        outputs=outputs,
        parity=parity,
        variants=variants,
        seconds=time.perf_counter() - t0,
        attempts=attempts,
    )
    log.info("%s", report.headline())
    return report


# ---------------------------------------------------------------------------- from a training run
def layout_from_spec(spec: Any) -> A.FeatureLayout:
    """ranker.features.FeatureSpec -> the serving layout (feature order, sides, vocab sizes)."""
    feats = [A.Feature(f.name, f.source, int(f.vocab_size)) for f in spec.features]
    return A.FeatureLayout(features=feats, scenario_feature=spec.features[spec.scenario_index].name)


def lookups_from_spec(spec: Any, users: Any, items: Any) -> tuple[A.LookupTable, A.LookupTable]:
    """Per-entity feature indices, computed by the spec's own encoder (the one training uses), so
    the serving path cannot drift from training."""
    import polars as pl

    def table(key: str, frame: pl.DataFrame, side: str) -> A.LookupTable:
        cols = [i for i, f in enumerate(spec.features) if f.source == side]
        ids = frame[key].cast(pl.String).to_list()
        rows = pl.DataFrame(
            {
                "user_id": ids if key == "user_id" else [None] * len(ids),
                "item_id": ids if key == "item_id" else [None] * len(ids),
                "scenario_id": [None] * len(ids),
            },
            schema={"user_id": pl.String, "item_id": pl.String, "scenario_id": pl.String},
        )
        enc = spec.encode_rows(rows, users, items) if ids else np.zeros((0, len(spec.features)), np.int64)
        return A.LookupTable.build(ids, [spec.features[i].name for i in cols], enc[:, cols])

    return table("user_id", users, "user"), table("item_id", items, "item")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ExportError(f"{path}: not valid JSON ({exc})") from exc


def source_from_run(
    run_dir: str | Path, *, dataset_dir: str | Path | None = None, valid_rows: int = 20_000, seed: int = 0
) -> ExportSource:
    """Load a training run (contract 4) and the dataset it was trained on into an ExportSource."""
    from feature_store.dataset import load_dataset
    from ranker.model_io import load_run

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MissingInputError(f"training run directory {run_dir} does not exist")
    model, spec = load_run(run_dir)
    run = _read_json(run_dir / "run.json")
    metrics = _read_json(run_dir / "metrics.json")
    ds_path = Path(dataset_dir) if dataset_dir else _dataset_path(run_dir, run)
    ds = load_dataset(ds_path)
    users_t, items_t = lookups_from_spec(spec, ds.users, ds.items)
    know = run.get("knowledge") or {}
    use_llm = bool(run.get("use_llm", bool(know)))
    kcheck = _check_knowledge_dataset(know, ds.version(), ds_path) if use_llm and know else {}
    source = ExportSource(
        model=model,
        layout=layout_from_spec(spec),
        vocabs=spec.vocabs,
        users=users_t,
        items=items_t,
        knowledge_dim=int(spec.knowledge_dim),
        use_llm=use_llm,
        knowledge={
            "family": know.get("family"),
            "snapshot_id": know.get("snapshot_id"),
            "snapshot_path": know.get("path"),
            # the dataset the knowledge was built from: serving refuses a store of another source
            **{k: kcheck.get(k) for k in ("dataset_version", "dataset_source", "foreign")},
        },
        feature_spec=spec.to_dict() | {"vocabs": f"see {A.VOCABS_FILE}"},
        run={
            "path": str(run_dir.resolve()),
            "backbone": run.get("backbone"),
            "use_llm": run.get("use_llm"),
            "meta": run.get("meta"),
            "seed": run.get("seed"),
            "lr": run.get("lr"),
            "best_epoch": run.get("best_epoch"),
            "dataset": run.get("dataset"),
            "knowledge": know or None,
            "provenance": run.get("provenance"),
        },
        metrics={"best_valid_auc": metrics.get("best_valid_auc"), "final": metrics.get("final")},
        scenarios=spec.scenario_ids(),
    )
    source.valid = _valid_inputs(spec, ds, know.get("path"), valid_rows, seed)
    source.knowledge_pool = _knowledge_pool(spec, know.get("path"))
    return source


def _check_knowledge_dataset(know: dict[str, Any], dataset_version: str, ds_path: Path) -> dict[str, Any]:
    """The run's snapshot must come from the dataset exported with (its parity and variant checks
    feed that snapshot's vectors to that dataset's rows); a run trained with
    train.allow_foreign_knowledge keeps its recorded exception. Reads the snapshot's manifest, or
    what run.json recorded when the snapshot is gone."""
    from feature_store.knowledge_snapshot import check_dataset, read_manifest

    path = know.get("path")
    if path and Path(path).exists():
        manifest = read_manifest(path)
    else:
        manifest = {k: know.get(k) for k in ("snapshot_id", "dataset_version", "dataset_source")}
    return check_dataset(
        manifest,
        path or "path not recorded",
        dataset_version,
        ds_path,
        allow_foreign=bool(know.get("allow_foreign_knowledge", False)),
    )


def _knowledge_pool(spec: Any, snapshot_path: str | None) -> tuple[np.ndarray, np.ndarray] | None:
    if not snapshot_path or spec.knowledge_dim <= 0 or not Path(snapshot_path).exists():
        return None
    from ranker.knowledge import load_knowledge

    kt = load_knowledge(snapshot_path, int(spec.knowledge_dim))
    # Row 0 of the user table is the "no knowledge" row; the pool holds real vectors only.
    users, scenarios = kt.user_vectors[1:], kt.scenario_vectors
    if len(users) == 0 or len(scenarios) == 0:
        return None
    return users, scenarios


def _dataset_path(run_dir: Path, run: dict[str, Any]) -> Path:
    path = (run.get("dataset") or {}).get("path") if isinstance(run.get("dataset"), dict) else None
    if path:
        return Path(path)
    cfg_path = run_dir / "config.yaml"
    if cfg_path.is_file():
        import yaml

        out = ((yaml.safe_load(cfg_path.read_text()) or {}).get("data") or {}).get("out")
        if out:
            return Path(out)
    raise ExportError(
        f"{run_dir}: cannot tell which dataset the run used (no dataset path in run.json or config.yaml); "
        "pass --dataset"
    )


def _valid_inputs(
    spec: Any, ds: Any, snapshot_path: str | None, rows: int, seed: int
) -> tuple[dict[str, np.ndarray], np.ndarray] | None:
    """A seeded sample of the validation split as model inputs, with knowledge from the run's
    snapshot exactly as training feeds it, for the float16/int8 AUC change."""
    import polars as pl

    valid = ds.interactions.filter(pl.col("split") == "valid")
    if valid.height == 0:
        return None
    if valid.height > rows:
        valid = valid.sample(n=rows, seed=seed)
    sparse = spec.encode_rows(valid, ds.users, ds.items)
    n, k = valid.height, max(int(spec.knowledge_dim), 1)
    x = {
        "sparse_ids": sparse,
        "user_knowledge": np.zeros((n, k), np.float32),
        "user_has_knowledge": np.zeros(n, np.float32),
        "scenario_knowledge": np.zeros((n, k), np.float32),
    }
    if snapshot_path and spec.knowledge_dim > 0 and Path(snapshot_path).exists():
        from ranker.knowledge import load_knowledge

        kt = load_knowledge(snapshot_path, int(spec.knowledge_dim))
        uidx, sidx = kt.lookup(valid, "validation split")
        x["user_knowledge"] = kt.user_vectors[uidx]
        x["user_has_knowledge"] = (uidx > 0).astype(np.float32)
        x["scenario_knowledge"] = kt.scenario_vectors[sidx]
    return x, valid["label"].to_numpy().astype(np.int64)


def export_run(
    run_dir: str | Path,
    out_dir: str | Path,
    cfg: ExportConfig,
    *,
    dataset_dir: str | Path | None = None,
    overwrite: bool = False,
) -> ExportReport:
    """Export a training run directory to a model directory (see module docstring).

    Args:
        run_dir: a `ranker.train.train` run directory (model.safetensors, feature_spec.json, run.json).
        out_dir: the model directory to write (contract 5), atomically and only if parity holds.
        cfg: the `export` settings.
        dataset_dir: the dataset the lookup tables and validation rows come from (default: the one
            recorded in run.json); its id must match the run's knowledge (ForeignKnowledgeError).
        overwrite: replace an existing `out_dir`.

    Returns:
        ExportReport: see `export_source`.
    """
    source = source_from_run(
        run_dir, dataset_dir=dataset_dir, valid_rows=cfg.variant_eval_rows, seed=cfg.parity_seed
    )
    return export_source(source, out_dir, cfg, overwrite=overwrite)
