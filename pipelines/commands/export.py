"""`llm4msr export`: a training run -> an ONNX model directory for serving (contract 5)."""

from __future__ import annotations

import argparse

from pipelines.commands.common import (
    choices,
    config_parent,
    data_parent,
    deprecated_alias,
    out_parent,
    run_parent,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        parents=[
            config_parent(),
            run_parent(),
            out_parent(metavar="MODEL_DIR", required=True, help="where to write the model directory"),
            data_parent(
                help="canonical dataset the run was trained on (default: the one recorded in the run)"
            ),
        ],
        help="export a trained ranker to ONNX (+ manifest, vocabularies, lookup tables)",
        description=(
            "Export the model of a training run to a single ONNX file with its weights inside, using the "
            "dynamo exporter and falling back to the legacy TorchScript exporter if it fails. The batch "
            "dimension is dynamic. Before publishing, onnxruntime is compared with PyTorch on batches of "
            "1, 2, 7 and 512 rows (one scenario and mixed scenarios, with fallback-knowledge rows); a model "
            "whose scores differ by more than export.parity_atol (1e-5), or, for a model that is "
            "ill-conditioned in float32, by more than its measured float32 rounding allows against a "
            "float64 evaluation (docs/serving.md), is refused and nothing is written. "
            "MODEL_DIR gets model.onnx, manifest.json (inputs, feature layout, knowledge family/dimension/"
            "snapshot, training run + metrics, exporter, parity), vocabs.json and the user/item lookup tables "
            "serving uses. Optional float16/int8 variants record their size and AUC change on the validation split."
        ),
    )
    deprecated_alias(p, "--dataset", "--data", "data")
    p.add_argument(
        "--variants",
        metavar="LIST",
        help="comma-separated extra variants: float16, int8 (default: export.variants)",
    )
    p.add_argument(
        "--exporter",
        choices=choices("export", "exporter"),
        help="auto (default): dynamo, falling back to legacy",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing MODEL_DIR (atomically)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from llm4msr.config import load_config
    from ranker.export import export_run

    overrides = list(args.overrides)
    if args.variants is not None:
        names = [v.strip() for v in args.variants.split(",") if v.strip()]
        overrides.append(f"export.variants=[{','.join(names)}]")
    if args.exporter:
        overrides.append(f"export.exporter={args.exporter}")
    cfg = load_config(args.config, overrides)
    report = export_run(args.run, args.out, cfg.export, dataset_dir=args.data, overwrite=args.overwrite)
    print(report.summary())
    return 0
