"""`llm4msr store`: publish knowledge snapshots to the online store and manage versions.

llm4msr store materialize [--knowledge DIR] [--store URL] snapshot (or offline root) -> online store
llm4msr store status [--store URL]                       current version, counts, age, memory
llm4msr store rollback [--store URL]                     previous online version becomes current
llm4msr store gc [--store URL] [--writing] [--dry-run]   remove incomplete (orphaned) versions
llm4msr store snapshots [--knowledge DIR] [--rollback]   offline snapshot versions
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any

from llm4msr.errors import UserError
from pipelines.commands.common import config_parent, json_parent, knowledge_parent, store_parent


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "store",
        help="materialize knowledge into the online store; versions, status, rollback",
        description=(
            "Feature store operations. Knowledge snapshots live in the offline store (versioned folders "
            "with a CURRENT pointer); `materialize` copies one into the online store (local files or "
            "Redis) as a new version and switches readers to it only after counts and a sample of "
            "checksums are verified. See docs/store.md."
        ),
    )
    ssub = p.add_subparsers(dest="store_command", metavar="ACTION")

    m = ssub.add_parser(
        "materialize",
        parents=[
            config_parent(),
            knowledge_parent(
                help="knowledge snapshot root (its CURRENT version is used) or one snapshot folder "
                "(default: knowledge.snapshot_root)"
            ),
            store_parent(),
            json_parent("the report"),
        ],
        help="write a snapshot into the online store and make it current",
        description=(
            "Write every vector of a knowledge snapshot into the online store as version <snapshot id>, "
            "verify it, then switch the current-version pointer. Idempotent (a current version is left "
            "alone) and resumable (an interrupted run continues where it stopped). On failure the "
            "previous version stays current."
        ),
    )
    m.set_defaults(handler=_materialize)

    s = ssub.add_parser(
        "status",
        parents=[config_parent(), store_parent(), json_parent("the status")],
        help="current version, counts, age, memory, history",
        description="Show the online store's current version (family, dimension, dtype, "
        "counts, age), the versions it holds, the rollback history and memory/disk use.",
    )
    s.set_defaults(handler=_status)

    r = ssub.add_parser(
        "rollback",
        parents=[config_parent(), store_parent()],
        help="make the previous online version current again",
        description="Switch the online store's pointer back to the previously current version "
        "(possible while it is kept: store.old_version_ttl_seconds after it was replaced).",
    )
    r.set_defaults(handler=_rollback)

    g = ssub.add_parser(
        "gc",
        parents=[config_parent(), store_parent(), json_parent("what was removed")],
        help="remove incomplete versions (orphaned values without metadata, partial writes)",
        description="Remove the online store's incomplete versions other than the current one: values "
        "whose version metadata is missing or damaged (left by a Redis server that restarted without "
        "persistence during a write; nothing can read or resume them) and, with --writing, partial "
        "writes that a re-run of the same materialization would resume. `store status` lists them "
        "with their size.",
    )
    g.add_argument("--writing", action="store_true", help="also remove partial writes (status writing)")
    g.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    g.set_defaults(handler=_gc)

    o = ssub.add_parser(
        "snapshots",
        parents=[
            config_parent(),
            knowledge_parent(help="knowledge snapshot root (default: knowledge.snapshot_root)"),
            json_parent("the listing"),
        ],
        help="list offline snapshot versions; roll back or prune them",
        description="List the versions of the offline store (knowledge snapshots) and which is "
        "current. --rollback makes the previously current one current again; --retain deletes "
        "all but the newest store.keep_versions versions (never the current one).",
    )
    o.add_argument("--rollback", action="store_true", help="make the previous snapshot current")
    o.add_argument("--retain", action="store_true", help="delete versions beyond store.keep_versions")
    o.set_defaults(handler=_snapshots)
    p.set_defaults(handler=lambda _args: (p.print_help(), 2)[1])


def _settings(args: argparse.Namespace) -> Any:
    from llm4msr.config import load_config

    return load_config(args.config, args.overrides)


def _fail(args: argparse.Namespace, exc: Exception) -> int:
    """Backend failures (server down, incomplete version): one clear line, exit code 1."""
    print(f"llm4msr store {args.store_command}: error: {exc}", file=sys.stderr)
    return 1


def _materialize(args: argparse.Namespace) -> int:
    from feature_store.materialize import materialize
    from feature_store.online import StoreError

    settings = _settings(args)
    cfg = settings.store
    try:
        report = materialize(args.knowledge or settings.knowledge.snapshot_root, args.store or cfg.url, cfg)
    except StoreError as exc:
        return _fail(args, exc)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    elif report.already_current:
        print(f"version {report.version} is already current in {report.store}; nothing to do")
    else:
        print(
            f"materialized {report.snapshot_path} -> {report.store} as version {report.version}: "
            f"{report.keys_written} keys written, {report.keys_skipped} resumed/skipped, "
            f"{report.write_seconds:.1f}s ({report.keys_per_second:,.0f} keys/s), "
            f"{report.verified.get('checksums_verified', 0)} checksums verified; now current "
            f"(previous: {report.previous or 'none'})"
            + (
                f"; rewritten {report.restarts} time(s) from scratch after the store lost the version"
                if report.restarts
                else ""
            )
        )
    return 0


def _fmt_time(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else "-"


def _status(args: argparse.Namespace) -> int:
    from feature_store.online import StoreError, open_store

    cfg = _settings(args).store
    try:
        with open_store(args.store or cfg.url, cfg) as store:
            st = store.status()
    except StoreError as exc:
        return _fail(args, exc)
    if args.json:
        print(json.dumps(st, indent=2, default=str))
        return 0
    print(f"store:    {st['url']} ({st['backend']})")
    cur = st["current"]
    if cur is None:
        print("current:  none (nothing materialized yet)")
    else:
        print(
            f"current:  {cur['version']}  family {cur['knowledge_family']}  dim {cur['dimension']} "
            f"{cur['dtype']}  counts {cur['counts']}"
        )
        print(f"          completed {_fmt_time(cur['completed_at'])}, age {st['age_seconds']:.0f}s")
    print(f"history:  {' <- '.join(reversed(st['history'])) or '-'}")
    for v in st["versions"]:
        mark = "*" if cur and v["version"] == cur["version"] else " "
        print(
            f"  {mark} {v['version']:<28} {v['status']:<9} counts {v['counts']}  retired {_fmt_time(v['retired_at'])}"
        )
    for v in st["incomplete"]:
        print(f"  ! {_describe_incomplete(v)}")
    if any(not v["current"] for v in st["incomplete"]):
        print("          (`llm4msr store gc` removes those without metadata; --writing also partial writes)")
    print(f"memory:   {json.dumps(st['memory'], default=str)}")
    return 0


def _describe_incomplete(v: dict[str, Any]) -> str:
    return (
        f"{v['version']:<28} {v['state']:<16} {v['entities']} values in {v['keys']} "
        f"{'file(s)' if 'path' in v else 'key(s)'}, {v['bytes'] / 1e6:.2f} MB"
        + ("  (the current version!)" if v["current"] else "")
    )


def _gc(args: argparse.Namespace) -> int:
    from feature_store.online import StoreError, open_store

    cfg = _settings(args).store
    try:
        with open_store(args.store or cfg.url, cfg) as store:
            removed = store.gc(include_writing=args.writing, dry_run=args.dry_run)
            url = store.redacted_url
    except StoreError as exc:
        return _fail(args, exc)
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "removed": removed}, indent=2))
        return 0
    verb = "would remove" if args.dry_run else "removed"
    print(
        f"{url}: {verb} {len(removed)} incomplete version(s), {sum(v['bytes'] for v in removed) / 1e6:.2f} MB"
    )
    for v in removed:
        print(f"  {_describe_incomplete(v)}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from feature_store.online import StoreError, open_store

    cfg = _settings(args).store
    try:
        with open_store(args.store or cfg.url, cfg) as store:
            before = store.current()
            after = store.rollback()
    except StoreError as exc:
        return _fail(args, exc)
    print(f"rolled back {before.version if before else 'none'} -> {after}")
    return 0


def _snapshots(args: argparse.Namespace) -> int:
    from feature_store.knowledge_snapshot import SnapshotError
    from feature_store.offline_store import OfflineStore

    settings = _settings(args)
    root = args.knowledge or settings.knowledge.snapshot_root
    store = OfflineStore(root)
    if not store.root.is_dir():
        raise UserError(f"offline store root {root} does not exist")
    try:
        if args.rollback:
            before = store.current_id()
            print(f"rolled back {before} -> {store.rollback()}")
        if args.retain:
            deleted = store.retain(settings.store.keep_versions)
            print(f"deleted {len(deleted)} old version(s): {', '.join(deleted) or '-'}")
    except SnapshotError as exc:
        raise UserError(str(exc)) from exc
    listing = store.describe()
    if args.json:
        print(json.dumps(listing, indent=2, default=str))
        return 0
    print(
        f"offline store {root}: {len(listing['versions'])} version(s), current {listing['current'] or 'none'}"
    )
    for v in listing["versions"]:
        mark = "*" if v["id"] == listing["current"] else " "
        print(
            f"  {mark} {v['id']:<28} counts {v.get('counts')}  dim {v.get('dimension')} {v.get('dtype')}  "
            f"family {v.get('knowledge_family')}"
        )
    return 0
