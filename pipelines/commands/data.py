"""`llm4msr data`: build canonical datasets from a source and show their summaries."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llm4msr.errors import MissingInputError, UserError
from pipelines.commands.common import choices, config_parent, data_parent, dataset_parent, out_parent


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="build canonical datasets (interactions, users, items, scenarios) and show summaries",
        description=(
            "Turn a source (synthetic, MovieLens, Amazon, KuaiSAR, Douban) into the canonical Parquet "
            "tables every later stage reads: interactions with a per-user temporal train/valid/test split, "
            "users with their training cutoff, items with the text prompts use, scenarios, vocabularies "
            "fit on the training split, a manifest with checksums and a summary. See docs/data.md."
        ),
    )
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")

    build = sub.add_parser(
        "build",
        parents=[
            config_parent(),
            dataset_parent(
                help="source adapter (default: detected from the files at --path when one is given, else "
                "data.dataset from the config, i.e. synthetic)"
            ),
            out_parent(help="output folder (default: data.out from the config)"),
        ],
        help="build a canonical dataset folder and print its summary",
        description=(
            "Build a canonical dataset and write it atomically to --out (nothing appears there if the "
            "build fails); the summary is printed and saved as summary.json. Examples:\n"
            "  llm4msr data build --out artifacts/data/synthetic\n"
            "  llm4msr data build --dataset movielens --path ../shared/data/ml-100k --out artifacts/data/ml100k\n"
            "  llm4msr data build --dataset amazon --path ../shared/data/amazon-food-kitchen --out artifacts/data/amazon"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    build.add_argument(
        "--path",
        metavar="P",
        help="source folder or file (data.path); without --dataset the adapter is detected from its files",
    )
    build.set_defaults(handler=_build)

    summary = sub.add_parser(
        "summary",
        parents=[config_parent(), data_parent()],
        help="print the summary of a built dataset",
        description="Print the summary (rows, users, items, positives per scenario and split) of a built dataset.",
    )
    summary.add_argument("dir", nargs="?", help=argparse.SUPPRESS)  # old spelling of --data
    summary.set_defaults(handler=_summary)
    parser.set_defaults(handler=lambda _args: (parser.print_help(), 2)[1])


def _build(args: argparse.Namespace) -> int:
    from feature_store.build import build_and_write
    from feature_store.dataset import format_summary
    from feature_store.schema import SUMMARY_FILE
    from llm4msr.config import load_config

    overrides = list(args.overrides)
    if args.dataset:
        overrides.append(f"data.dataset={args.dataset}")
    settings = load_config(args.config, overrides)
    cfg = settings.data
    if args.path is not None:
        cfg.path = args.path
    if cfg.path and cfg.dataset == "synthetic" and not args.dataset:
        cfg.dataset = _detect(cfg.path)
    out = Path(args.out or cfg.out)
    if cfg.dataset != "synthetic" and not cfg.path:
        raise UserError(f"dataset {cfg.dataset!r} needs --path (the folder with its source files)")
    folder = build_and_write(cfg, out)
    summary = json.loads((folder / SUMMARY_FILE).read_text())
    print(format_summary(summary))
    print(f"written to {folder}")
    return 0


def _detect(path: str) -> str:
    """The one adapter that recognises the files at `path`: a path with the default dataset
    (synthetic, which reads no files) would otherwise build synthetic data and look like success."""
    from feature_store.adapters import detect_datasets

    found = detect_datasets(path)
    others = "|".join(d for d in choices("data", "dataset") if d != "synthetic")
    if not found:
        raise UserError(
            f"--path {path}: no known source layout there (MovieLens u.data / *.inter / ratings.dat, Amazon "
            "num.txt or review JSON lines, KuaiSAR rec_inter.csv + src_inter.csv, a Douban CSV), and the "
            f"default dataset 'synthetic' reads no files; pass --dataset {others}"
        )
    if len(found) > 1:
        raise UserError(f"--path {path}: the files fit several datasets {found}; pass --dataset {others}")
    print(f"dataset {found[0]!r} detected from the files in {path} (pass --dataset to choose another)")
    return found[0]


def _summary(args: argparse.Namespace) -> int:
    from feature_store.dataset import format_summary
    from feature_store.schema import MANIFEST_FILE, SUMMARY_FILE
    from llm4msr.config import load_config

    folder = Path(args.data or args.dir or load_config(args.config, args.overrides).data.out)
    if not folder.is_dir():
        raise MissingInputError(f"dataset folder {folder} does not exist")
    path = folder / SUMMARY_FILE
    if not path.is_file():
        hint = (
            "" if (folder / MANIFEST_FILE).is_file() else " (is it a dataset built by `llm4msr data build`?)"
        )
        raise UserError(f"{path} does not exist{hint}")
    print(format_summary(json.loads(path.read_text())))
    return 0
