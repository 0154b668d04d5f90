"""Rich tables for the terminal. Takes result objects; computes nothing of its own."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from convrepair.convert import ConversionResult, Validation
    from convrepair.plugins import PluginRegistry

# Wide enough for the tables when stdout is a pipe or a CI log (rich would assume 80 columns).
console = Console(width=None if Console().is_terminal else 160)


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def render_conversions(results: list[ConversionResult], checks: list[Validation] | None) -> None:
    table = Table(title="convrepair convert", show_lines=False)
    for column in ("output", "formats", "route", "time", "size (src → out)"):
        table.add_column(column)
    if checks:
        table.add_column("label agreement", justify="right")
        table.add_column("max |Δ|", justify="right")
    for index, result in enumerate(results):
        row = [
            result.output.path.name,
            f"{result.source.format} → {result.output.format}",
            " → ".join(result.route),
            f"{result.seconds:.1f} s",
            f"{human_size(result.sizes['source'])} → {human_size(result.sizes['output'])}",
        ]
        if checks:
            check = checks[index]
            style = "green" if check.agrees else "red"
            agreement = "n/a" if check.label_agreement is None else f"{check.label_agreement:.2%} of {check.n}"
            row += [f"[{style}]{agreement}[/]", f"{check.max_abs:.2e}"]
        table.add_row(*row)
    console.print(table)


def plugin_rows(registry: PluginRegistry, deep: bool) -> list[dict[str, Any]]:
    rows = []
    for record in registry.records:
        plugin = record.plugin
        if plugin is None:
            rows.append({"plugin": record.entry_point, "status": "broken", "reason": record.error, "formats": [], "converters": []})
            continue
        reason = plugin.unavailable_reason(deep=deep)
        rows.append(
            {
                "plugin": plugin.name,
                "entry_point": record.entry_point,
                "status": "available" if reason is None else "unavailable",
                "reason": reason,
                "formats": [f.name for f in plugin.formats],
                "converters": [
                    {"name": c.name, "from": list(c.sources), "to": c.target, "writes": c.output_format, "lossy": c.lossy}
                    for c in plugin.converters
                ],
            }
        )
    return rows


def render_plugins(registry: PluginRegistry, deep: bool) -> None:
    rows = plugin_rows(registry, deep)
    table = Table(title="convrepair plugins")
    for column in ("plugin", "status", "formats", "converters"):
        table.add_column(column)
    for row in rows:
        status = "[green]available[/]" if row["status"] == "available" else f"[red]{row['status']}[/]: {row['reason']}"
        converters = "\n".join(f"{c['name']}: {'/'.join(c['from'])} → {c['to']}" for c in row["converters"])
        table.add_row(row["plugin"], status, ", ".join(row["formats"]), converters)
    console.print(table)
