"""The demo's final table, and ``--report DIR``: report.md, chart.png, results.csv, summary.json.

The table is defined once (:data:`COLUMNS`) and rendered twice: as a rich table on the console
and as Markdown in ``report.md``. The chart needs matplotlib, an optional extra
(``pip install 'msgin5g[report]'``); without it the report says how to get it and the rest is
still written.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path as FsPath

from rich import box
from rich.markup import escape
from rich.table import Table

from .drivers import UeRun
from .stats import PER_UE_FLOOR, PathSummary

MATPLOTLIB_HINT = "pip install 'msgin5g[report]'  (or: pip install matplotlib)"
#: the same hint for rich's console.print (whose markup would take "[report]" for a style)
MATPLOTLIB_HINT_MARKUP = escape(MATPLOTLIB_HINT)


def duration(ms: float | None) -> str:
    """A latency with its unit, short: 5.1 ms, 774 ms, 2.7 s, 101 s."""
    if ms is None:
        return "-"
    if ms < 100:
        return f"{ms:.1f} ms"
    if ms < 1000:
        return f"{ms:.0f} ms"
    return f"{ms / 1000:.1f} s" if ms < 10_000 else f"{ms / 1000:,.0f} s"


def _int(v: int | None) -> str:
    return "-" if v is None else f"{v:,}"


def _saved(r: PathSummary) -> str:
    if r.saved_by_bulk is None:
        return "-"
    floor = PER_UE_FLOOR * (r.configured + r.forbidden + r.not_found)
    pct = f" ({100 * r.saved_by_bulk / floor:.0f}%)" if floor else ""
    return f"{r.saved_by_bulk:,}{pct}"


#: (header, cell) — one definition for the console and the Markdown table
COLUMNS: list[tuple[str, Callable[[PathSummary], str]]] = [
    ("path", lambda r: r.label),
    ("UEs", lambda r: _int(r.ues)),
    ("2.05", lambda r: _int(r.configured)),
    ("4.03", lambda r: _int(r.forbidden)),
    ("4.04", lambda r: _int(r.not_found)),
    ("errors", lambda r: _int(r.errors)),
    ("wrong", lambda r: _int(r.unexpected)),
    ("p50", lambda r: duration(r.p50_ms)),
    ("p95", lambda r: duration(r.p95_ms)),
    ("p99", lambda r: duration(r.p99_ms)),
    ("Uu msgs", lambda r: _int(r.uu_messages)),
    ("Uu bytes", lambda r: _int(r.uu_bytes)),
    ("msgs/2.05", lambda r: "-" if r.uu_per_configured is None else f"{r.uu_per_configured:.2f}"),
    ("saved by bulk", _saved),
]

TABLE_NOTES = (
    "wrong: UEs that got anything but the outcome their provisioning implies (errors included)",
    "p50/p95/p99: configuration latency, first request → final answer, retries included "
    "(observer: document change → notification)",
    "Uu: the path's leg to the SCM-S, both directions, counted on the wire (UDP datagrams, or CoAP messages "
    "over TCP)",
    f"saved by bulk: per-UE configuration's floor ({PER_UE_FLOOR} Uu messages per UE answered) minus the "
    "gateway's Uu messages",
)


#: width below which the table is printed transposed (one column per path)
WIDE_TABLE = 130


def console_table(rows: Sequence[PathSummary], title: str, width: int = 140) -> Table:
    """The final table: one row per path, or, on a narrow terminal, one column per path."""
    table = Table(
        title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True
    )
    if width < WIDE_TABLE:
        table.add_column("", no_wrap=True)
        for r in rows:
            table.add_column(r.label, justify="right", no_wrap=True, style="red" if r.unexpected else None)
        for header, cell in COLUMNS[1:]:
            table.add_row(header, *(cell(r) for r in rows))
        return table
    for i, (header, _) in enumerate(COLUMNS):
        table.add_column(header, justify="left" if i == 0 else "right", no_wrap=True)
    for r in rows:
        table.add_row(*(cell(r) for _, cell in COLUMNS), style="red" if r.unexpected else None)
    return table


def markdown_table(rows: Sequence[PathSummary]) -> str:
    head = "| " + " | ".join(h for h, _ in COLUMNS) + " |"
    sep = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(COLUMNS))) + "|"
    body = ["| " + " | ".join(cell(r) for _, cell in COLUMNS) + " |" for r in rows]
    return "\n".join([head, sep, *body])


CSV_HEADER = (
    "ue_uri",
    "path",
    "role",
    "asks_for",
    "identity",
    "expected",
    "expected_ue_service_id",
    "code",
    "outcome",
    "ue_service_id",
    "ok",
    "latency_ms",
    "attempts",
    "detail",
)


def write_csv(path: FsPath, runs: Sequence[UeRun]) -> None:
    """The raw per-UE results, one row per UE."""
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(CSV_HEADER)
        for r in runs:
            w.writerow(
                (
                    r.ue.device,
                    r.ue.path.value,
                    r.ue.role,
                    r.ue.asks_for,
                    r.ue.identity or "",
                    r.expected.code,
                    r.expected.ue_service_id or "",
                    r.code,
                    r.outcome.value,
                    r.ue_service_id or "",
                    "yes" if r.ok else "no",
                    f"{1000 * r.latency:.2f}",
                    r.attempts,
                    r.detail,
                )
            )


def cdf_steps(values_ms: Sequence[float]) -> tuple[list[float], list[float]]:
    """The empirical CDF as step points (x, share answered by x): it starts at 0 at the first
    latency, so that a curve of a few UEs does not start partway up (at 1/n)."""
    values = sorted(values_ms)
    if not values:
        return [], []
    return [values[0], *values], [0.0] + [(i + 1) / len(values) for i in range(len(values))]


def write_chart(
    path: FsPath, rows: Sequence[PathSummary], latencies: dict[str, list[float]], title: str = "msgin5g demo"
) -> str | None:
    """chart.png: latency distribution per path, Uu messages per configured UE, bulk vs per-UE.
    Returns None on success, or why there is no chart."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return f"no chart: matplotlib is not installed ({MATPLOTLIB_HINT})"

    colors = {"relay": "#1f77b4", "gateway": "#2ca02c", "direct": "#ff7f0e", "observer": "#9467bd"}
    fig, (ax_lat, ax_uu, ax_bulk) = plt.subplots(
        1, 3, figsize=(16, 5.2), gridspec_kw={"width_ratios": [1.5, 1, 1]}
    )

    for r in rows:
        xs, frac = cdf_steps([1000 * t for t in latencies.get(r.path, ())])
        if not xs:
            continue
        ax_lat.step(
            xs,
            frac,
            where="post",
            color=colors.get(r.path),
            label=f"{r.label} (n={len(xs) - 1})",
        )
    ax_lat.set_xscale("log")
    ax_lat.set_xlabel("configuration latency, ms (log scale)")
    ax_lat.set_ylabel("share of UEs answered")
    ax_lat.set_title("Latency distribution per path")
    ax_lat.grid(True, which="both", alpha=0.3)
    ax_lat.legend(loc="lower right", fontsize=8)

    uu_rows = [r for r in rows if r.uu_per_configured is not None and r.path != "observer"]
    labels = [r.label for r in uu_rows]
    values = [r.uu_per_configured for r in uu_rows]
    bars = ax_uu.bar(labels, values, color=[colors.get(r.path) for r in uu_rows])
    ax_uu.bar_label(bars, fmt="%.2f")
    # the floor is named in a legend, not by a text on the line, which ran into the last bar
    ax_uu.axhline(
        PER_UE_FLOOR, color="grey", linestyle="--", linewidth=1, label=f"per-UE floor ({PER_UE_FLOOR})"
    )
    ax_uu.legend(loc="upper left", fontsize=8)
    ax_uu.margins(y=0.2)  # room above the tallest bar for its value label and the legend
    ax_uu.set_ylabel("Uu messages per configured UE")
    ax_uu.set_title("Uu cost of one configuration")
    ax_uu.tick_params(axis="x", labelsize=8, rotation=10)

    gw = next((r for r in rows if r.path == "gateway"), None)
    if gw is not None:
        answered = gw.configured + gw.forbidden + gw.not_found
        pairs = [
            ("per-UE floor", PER_UE_FLOOR * answered, "#bbbbbb"),
            (gw.label, gw.uu_messages, colors["gateway"]),
        ]
        bars = ax_bulk.bar([p[0] for p in pairs], [p[1] for p in pairs], color=[p[2] for p in pairs])
        ax_bulk.bar_label(bars, labels=[f"{p[1]:,}" for p in pairs])
        ax_bulk.margins(y=0.12)
        ax_bulk.set_title(f"Gateway: Uu messages for {answered:,} UEs")
        ax_bulk.set_ylabel("Uu messages (both directions)")
    else:
        ax_bulk.set_axis_off()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def write_report(
    directory: FsPath,
    *,
    rows: Sequence[PathSummary],
    runs: Sequence[UeRun],
    latencies: dict[str, list[float]],
    summary: dict,
    verdict_text: str,
    settings_line: str,
    chart_title: str = "msgin5g demo",
    extra_md: Sequence[str] = (),
) -> list[str]:
    """Write the report files into ``directory``; returns notes for the console (e.g. no chart)."""
    directory.mkdir(parents=True, exist_ok=True)
    notes = []
    write_csv(directory / "results.csv", runs)
    (directory / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    chart_problem = write_chart(directory / "chart.png", rows, latencies, chart_title)
    if chart_problem:
        notes.append(escape(chart_problem))  # printed with rich: keep "[report]" from being markup
    md = [
        "# msgin5g demo report",
        "",
        settings_line,
        "",
        f"**{verdict_text}**",
        "",
        markdown_table(rows),
        "",
        *(f"- {note}" for note in TABLE_NOTES),
        "",
    ]
    md += (
        ["![latency per path, Uu messages per UE, bulk vs per-UE](chart.png)", ""]
        if not chart_problem
        else [
            f"_{chart_problem}_",
            "",
        ]
    )
    md += list(extra_md)
    md += [
        "",
        "Files: `results.csv` (one row per UE: expected and actual outcome, latency, attempts), "
        "`summary.json` (everything above, machine-readable), `fleet.yaml` and `meters.csv` (the "
        "provisioning imported with `msgin5g config import`), `logs/` (each process's output).",
        "",
    ]
    (directory / "report.md").write_text("\n".join(md), encoding="utf-8")
    return notes
