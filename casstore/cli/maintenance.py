"""The commands that look after a project's store: `stats` (what it holds), `verify`
(damage, and what gc could reclaim; exit 1 on damage) and `gc` (delete the reclaimable)."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import click

from casstore.cas.progress import Meter
from casstore.cli.app import EXIT_FAILED, example, main
from casstore.cli.output import human_age, human_bytes, key_values, table, warn
from casstore.cli.progress import bar_for
from casstore.cli.project import Project, project_command
from casstore.errors import InvalidInput


@main.command(epilog=example("casstore stats --db sqlite:///runs.db", "casstore --db sqlite:///runs.db stats --json"))
@project_command
def stats(project: Project) -> None:
    """Blobs and references of the project, logical vs stored bytes, the dedup ratio, and
    what the datastore holds on disk: referenced by some project, or reclaimable.

    logical_bytes sums the uncompressed archive size over references; stored_bytes sums what
    the distinct referenced blobs take in the datastore (a chunked blob's manifest, and each
    chunk once however many blobs use it); dedup_ratio = logical / stored. on_disk_bytes is
    everything the datastore holds (every project's blobs and chunks, each once, the
    quarantine, temp files); reclaimable_bytes what `casstore gc` could delete (its grace
    period aside), referenced_bytes the rest. Standalone archives: named references
    (ArchiveStoreIO), which verify checks too."""
    from casstore.cas.stats import project_stats
    from casstore.session import field_roots

    result = project_stats(project.index, project.store, field_roots)
    if result.missing_blobs:
        warn(f"{result.missing_blobs} referenced blob(s) are missing from the datastore: "
             f"run `{project.suggest('verify')}`")
    if result.reclaimable_unknown is not None:
        warn(f"reclaimable bytes unknown: {result.reclaimable_unknown}")
    if project.as_json:
        project.emit("stats", {**asdict(result), "datastore": project.store.blobs.url})
        return
    click.echo("\n".join(key_values(_stats_rows(project, result))))


def _stats_rows(project: Project, result: Any) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [
        ("datastore", project.store.blobs.url),
        ("blobs", result.blobs),
        ("references", result.references),
        ("logical bytes", _bytes(result.logical_bytes)),
        ("stored bytes", f"{_bytes(result.stored_bytes)}, what this project's blobs take"),
        ("dedup ratio", f"{result.dedup_ratio:.2f}")]
    if result.chunked_blobs:
        rows.append(("chunked blobs", f"{result.chunked_blobs}, using {result.chunks} distinct chunk(s), "
                     "each counted once in stored bytes"))
    if result.missing_blobs:
        rows.append(("missing blobs", result.missing_blobs))
    if result.unknown_size:
        rows.append(("unknown sizes", f"{result.unknown_size} reference(s) whose blob has no facts in the index"))
    if result.standalone_archives:
        rows.append(("standalone archives", f"{result.standalone_archives} named reference(s) (ArchiveStoreIO)"))
    rows.append(("on disk", f"{_bytes(result.on_disk_bytes)}, all the datastore holds"))
    if result.reclaimable_bytes is None:
        rows.append(("reclaimable", "unknown (see the warning)"))
    else:
        rows.append(("referenced", f"{_bytes(result.referenced_bytes)}, by this or another project"))
        rows.append(("reclaimable", f"{_bytes(result.reclaimable_bytes)}, not referenced: `casstore gc` deletes "
                     f"what is older than its grace period (`{project.suggest('gc', '--dry-run')}` lists it)"))
    return rows


def _bytes(n: int) -> str:
    return f"{n} ({human_bytes(n)})"


@main.command(epilog=example("casstore verify --db sqlite:///runs.db", "casstore verify --deep --sample 10% --db sqlite:///runs.db"))
@click.option("--deep", is_flag=True, help="Re-hash every referenced blob (reads all of them; progress bar on a terminal).")
@click.option("--sample", metavar="PART", help="With --deep, re-hash only a random part of the stored objects "
              "(blobs stored whole, chunks): a percentage (10%) or a byte budget (2GiB, 500MB).")
@click.option("--seed", type=click.IntRange(min=0), help="The seed of --sample's random pick (default: a new one, "
              "printed): the same seed picks the same objects again.")
@project_command
def verify(project: Project, deep: bool, sample: str | None, seed: int | None) -> None:
    """Check the index against the datastore: damage and what gc could reclaim.

    Damage (exit 1): a referenced blob missing, of the wrong size, with --deep of the wrong
    digest, an archive that does not read, index facts that disagree with the store or are
    not facts, a second copy that disagrees with them, damage a load recorded and no persist
    has repaired yet, fields and reference rows that name different blobs, fields that do not
    decode, a file in the blobs folder that is not a blob (foreign).
    Reclaimable (exit 0): unreferenced blobs, leftovers of interrupted writes, expired leases,
    damaged copies a repair moved into the quarantine, reference rows of experiments that no
    longer exist.

    With --deep --sample 10% (or a byte budget, --sample 2GiB) only a random part is
    re-hashed, and the report says which (and the seed that repeats it: --seed N); the
    other checks still cover every blob."""
    from casstore.cas.verify import verify as run_verify
    from casstore.session import field_roots

    part = _sample(sample, seed, deep)
    index, store = project.index, project.store
    with bar_for(project.as_json or not deep, "") as bar:
        step = None
        if bar is not None:
            total = sum({r.blob_id: r.size or 0 for r in index.iter_refs()}.values())
            step = Meter(bar, "verify", "re-hashing", total=_bar_length(total, part))
        report = run_verify(index, store, field_roots=field_roots, deep=deep, progress=step, sample=part)
        if step is not None:
            step.finish()
    if project.as_json:
        document: dict[str, Any] = {
            "problems": [{"kind": p.kind, "blob": p.blob, "experiment": p.experiment, "field": p.field,
                          "detail": p.detail} for p in report.problems],
            "reclaimable": [_blob_or_path(r.kind, r.blob, r.path, r.bytes) for r in report.reclaimable],
        }
        if report.sample is not None:
            document["sample"] = {**asdict(report.sample), "repeat": _repeat(project, report.sample)}
        project.emit("verify", document)
    else:
        _print_verify(project, report, deep)
    if report.problems:
        raise click.exceptions.Exit(EXIT_FAILED)


def _sample(text: str | None, seed: int | None, deep: bool) -> Any:
    """--sample and --seed as the library's Sample (None without --sample); usage errors
    (exit 2) for a part that is no part, or either option without what it needs."""
    from casstore.cas.verify_sample import Sample

    if text is None:
        if seed is not None:
            raise click.UsageError("--seed picks the objects of --sample: pass --sample too")
        return None
    if not deep:
        raise click.UsageError("--sample is a part to re-hash: pass --deep too (verify --deep --sample 10%)")
    try:
        return Sample.parse(text, seed)
    except InvalidInput as exc:
        raise click.BadParameter(str(exc), param_hint="--sample") from None


def _bar_length(total: int, part: Any) -> int:
    """The bytes the progress bar expects: all the referenced bytes, or about the sample's."""
    if part is None:
        return total
    return int(total * part.percent / 100) if part.percent is not None else min(total, part.budget)


def _repeat(project: Project, sample: Any) -> str:
    return project.suggest("verify", "--deep", "--sample", sample.spec, "--seed",
                           str(sample.seed))


def _blob_or_path(kind: str, blob: str | None, path: str | None, size: int) -> dict[str, Any]:
    item: dict[str, Any] = {"kind": kind}
    if blob is not None:
        item["blob"] = blob
    else:
        item["path"] = path
    item["bytes"] = size
    return item


def _print_verify(project: Project, report: Any, deep: bool) -> None:
    names = {str(i): n for i, n in project.index.list_experiments()}
    out = []
    if report.problems:
        out.append(f"problems ({len(report.problems)}):")
        out.append(table(["KIND", "BLOB", "EXPERIMENT", "FIELD", "DETAIL"],
                         [(p.kind, p.blob, names.get(p.experiment or "", p.experiment or "-"), p.field or "-",
                           p.detail) for p in report.problems]))
    reclaim = sum(r.bytes for r in report.reclaimable)
    if report.reclaimable:
        out.append(f"reclaimable ({len(report.reclaimable)}, {human_bytes(reclaim)}; `{project.suggest('gc')}` "
                   "deletes those older than its grace period):")
        out.append(table(["KIND", "BLOB OR PATH", "SIZE", "AGE"],
                         [(r.kind, r.blob or r.path, human_bytes(r.bytes), human_age(r.age_s))
                          for r in report.reclaimable], right=[2, 3]))
    how = "sampled" if report.sample is not None else "re-hashed" if deep else "checked"
    out.append(f"{report.blobs_checked} referenced blob(s) {how}: {len(report.problems)} problem(s), "
               f"{len(report.reclaimable)} reclaimable item(s) ({human_bytes(reclaim)})")
    if report.sample is not None:
        part = report.sample
        out.append(f"re-hashed a sample of {part.spec}: {part.objects} of {part.objects_total} object(s), "
                   f"{human_bytes(part.bytes)} of {human_bytes(part.bytes_total)}, seed {part.seed}; the other "
                   f"objects were checked for existence and size only. Repeat it: {_repeat(project, part)}")
    click.echo("\n".join(out))


class Duration(click.ParamType):
    """0, 90s, 30m, 1h, 7d (the library's parser, casstore.cas.gc.parse_duration)."""

    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        from casstore.cas.gc import parse_duration

        if isinstance(value, (int, float)):
            return float(value)
        try:
            return parse_duration(value)
        except InvalidInput as exc:
            self.fail(str(exc), param, ctx)


@main.command(epilog=example("casstore gc --dry-run --db sqlite:///runs.db", "casstore gc --grace 0 --db sqlite:///runs.db"))
@click.option("--dry-run", is_flag=True, help="List what would be deleted and the bytes freed; delete nothing.")
@click.option("--grace", type=Duration(), default="1h", show_default=True,
              help="Keep anything younger than this: 0, 90s, 30m, 1h, 7d.")
@project_command
def gc(project: Project, dry_run: bool, grace: float) -> None:
    """Delete what verify calls reclaimable and is older than the grace period.

    Reads every database registered in the datastore, its reference rows and its fields, and
    refuses (exit 3), naming it, if one cannot be opened or its fields do not decode; blobs
    leased by a write in progress are never deleted."""
    from casstore.cas.gc import collect
    from casstore.session import field_roots

    index = project.index if dry_run else project.writable_index()
    with bar_for(project.as_json, "gc") as bar:
        report = collect(index, project.store, field_roots=field_roots, grace_s=grace, dry_run=dry_run, progress=bar)
    reclaim_now = project.suggest("gc", "--grace", "0")
    if project.as_json:
        project.emit("gc", {"deleted": [_without_kind(_blob_or_path(d.kind, d.blob, d.path, d.bytes)) for d in report.deleted],
                      "freed_bytes": report.freed_bytes, "kept": report.kept,
                      "grace": _grace_json(report, reclaim_now)})
        return
    for why in report.kept:
        warn(f"kept {why}")
    if report.deleted:
        click.echo(table(["KIND", "BLOB OR PATH", "SIZE"],
                         [(d.kind, d.blob or d.path, human_bytes(d.bytes)) for d in report.deleted], right=[2]))
    verb = "would delete" if dry_run else "deleted"
    freed = "would free" if dry_run else "freed"
    click.echo(f"{verb} {len(report.deleted)} item(s), {freed} {report.freed_bytes} bytes "
               f"({human_bytes(report.freed_bytes)})" + (" (dry run)" if dry_run else ""))
    if report.held:
        click.echo(_grace_text(report, reclaim_now))


def _grace_text(report: Any, reclaim_now: str) -> str:
    """What the grace period keeps, until when, and the command that deletes it now."""
    first, last = report.first_reclaimable, report.last_reclaimable
    since = f" (the first from {_when(first)})" if len(report.held) > 1 and last - first >= 1 else ""
    return (f"{len(report.held)} item(s) ({human_bytes(report.held_bytes)}) are kept by the grace period "
            f"({human_age(report.grace_s)}) until {_when(last)}{since}; to reclaim them now: {reclaim_now}")


def _when(epoch: float) -> str:
    """An ISO time (UTC) and how far off it is: '2026-12-02T09:41:00Z (in 58.0m)'."""
    iso = _iso(epoch)
    ahead = epoch - time.time()
    return f"{iso} (in {human_age(ahead)})" if ahead > 0 else f"{iso} (now)"


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    from datetime import datetime, timezone

    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _grace_json(report: Any, reclaim_now: str) -> dict[str, Any]:
    return {"grace_s": report.grace_s, "held_items": len(report.held), "held_bytes": report.held_bytes,
            "first_reclaimable": _iso(report.first_reclaimable), "last_reclaimable": _iso(report.last_reclaimable),
            "held": [{**_blob_or_path(h.kind, h.blob, h.path, h.bytes), "reclaimable_at": _iso(h.reclaimable_at)}
                     for h in report.held],
            "reclaim_now": reclaim_now if report.held else None}


def _without_kind(item: dict[str, Any]) -> dict[str, Any]:
    item.pop("kind", None)
    return item
