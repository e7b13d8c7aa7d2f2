"""The tables bench/dedup.py prints: bytes added and time per step and tool, casstore ÷ each peer
(median of the per-run ratios), and issue 13's targets for casstore's bytes (PASS/MISS)."""

from __future__ import annotations

import statistics
from typing import Any, Sequence

CAS = "casstore"
WALL = "casstore (subprocess wall)"


def fmt_bytes(value: float) -> str:
    if value >= 100e6:
        return f"{value / 1e6:,.0f} MB"
    if value >= 1e6:
        return f"{value / 1e6:.1f} MB"
    if value >= 1e3:
        return f"{value / 1e3:.1f} kB"
    return f"{value:.0f} B"


def fmt_seconds(value: float) -> str:
    return f"{value:.2f} s"


def ratio(cas: Sequence[float], peer: Sequence[float]) -> str:
    """Median over the runs of casstore ÷ peer; runs where the peer added nothing are left out."""
    values = [c / p for c, p in zip(cas, peer) if p > 0]
    if values:
        value = statistics.median(values)
        return f"{value:,.0f}x" if value >= 100 else f"{value:.2f}x"
    if not cas:
        return "-"
    return "0 ÷ 0" if all(c == 0 for c in cas) else "∞"


def _cells(step: dict[str, dict[str, list[float]]], names: list[str], what: str,
           fmt: Any) -> tuple[list[str], list[str]]:
    values, ratios = [], []
    for name in names:
        got = step.get(name, {}).get(what, [])
        values.append(fmt(statistics.median(got)) if got else "n/a")
        if name != CAS:
            ratios.append(ratio(step.get(CAS, {}).get(what, []), got) if got else "n/a")
    return values, ratios


def scenario_tables(sc: Any, names: list[str], samples: dict, info: dict) -> list[str]:
    peers = [n for n in names if n != CAS]
    head = "| " + " | ".join(["step", *names, *[f"casstore ÷ {p}" for p in peers]])
    lines = [f"### {sc.name}", "", "Bytes added to the store (median)", "",
             head + " | casstore target | |", "|" + "---|" * (len(names) + len(peers) + 3)]
    for step in sc.steps:
        values, ratios = _cells(samples.get(step.name, {}), names, "bytes", fmt_bytes)
        limit = info.get(step.name, {}).get("limit", -1)
        cas = samples.get(step.name, {}).get(CAS, {}).get("bytes", [])
        target, verdict = "", ""
        if step.target and cas:
            target = f"{step.target_text} = {fmt_bytes(limit)}"
            verdict = "PASS" if statistics.median(cas) <= limit else "MISS"
        lines.append(f"| {step.label} | " + " | ".join([*values, *ratios, target, verdict]) + " |")
    values, ratios = _cells(samples.get("total", {}), names, "bytes", fmt_bytes)
    lines.append("| store after all versions | " + " | ".join([*values, *ratios, "", ""]) + " |")
    lines += ["", "Wall time of the store command (median)", "",
              head + f" | {WALL} |", "|" + "---|" * (len(names) + len(peers) + 2)]
    for step in sc.steps:
        cells = samples.get(step.name, {})
        values, ratios = _cells(cells, names, "seconds", fmt_seconds)
        wall = cells.get(WALL, {}).get("seconds", [])
        lines.append(f"| {step.label} | " + " | ".join(
            [*values, *ratios, fmt_seconds(statistics.median(wall)) if wall else "n/a"]) + " |")
    return lines + [""]


WHOLE = "casstore whole"
LOADS = (("load-cold", "load, page cache dropped first"), ("load-warm", "load again, datastore in the page cache"))


def load_tables(sc: Any, samples: dict) -> list[str]:
    """casstore's loads of the first version against a whole datastore's (issue 13: ≤ 1.0x)."""
    rows = [(label, samples.get(step, {})) for step, label in LOADS if samples.get(step)]
    if not rows:
        return []
    lines = ["Load of the first version into an empty folder, in-process around load_experiment() (median)", "",
             f"| load | {CAS} | {WHOLE} | ÷ whole | target | |", "|---|---|---|---|---|---|"]
    for label, cells in rows:
        cas, whole = cells.get(CAS, {}).get("seconds", []), cells.get(WHOLE, {}).get("seconds", [])
        if not cas or not whole:
            continue
        value = statistics.median(c / w for c, w in zip(cas, whole))
        lines.append(f"| {label} | {fmt_seconds(statistics.median(cas))} | {fmt_seconds(statistics.median(whole))} "
                     f"| {value:.2f}x | ≤ 1.0x | {'PASS' if value <= 1.0 else 'MISS'} |")
    return lines + [""]


def render(info: dict, names: list[str], chosen: list[Any], samples: dict, steps: dict) -> str:
    size = info["sizes"]
    lines = [
        f"casstore dedup benchmark, issue 13 ({info['size']} size, {info['runs']} runs; figures are medians, "
        "casstore ÷ peer the median of the per-run ratios)",
        f"machine: {info['nproc']} cores, {info['filesystem']}, Python {info['python']}",
        f"data: big = {size['big_files']} x {size['big_mib']} MiB of random bytes; small = "
        f"{size['small_files']:,} files, {size['small_bytes'] / 1e6:.0f} MB; training = "
        f"{size['epochs']} epochs of one {size['ckpt_mib']} MiB checkpoint",
        "tools, each with its defaults:",
    ]
    for name in names:
        tool = info["tools"][name]
        lines.append(f"  - {name}: {tool['version']}; {tool['settings']}")
    lines += [
        "bytes added = growth of the apparent size of the files in the store's folder (casstore: the datastore; "
        "DVC: .dvc/cache; restic, borg: the repository), measured after each step",
        "time = wall time of the store command: peers as subprocesses (start-up included); casstore in-process "
        f"around persist() in a worker subprocess (its whole subprocess: the last column)",
        f"command: {info['command']}",
        "",
    ]
    for sc in chosen:
        lines += scenario_tables(sc, names, samples.get(sc.name, {}), steps.get(sc.name, {}))
        lines += load_tables(sc, samples.get(sc.name, {}))
    lines.append(f"total benchmark time: {info['total_seconds']} s")
    return "\n".join(lines)
