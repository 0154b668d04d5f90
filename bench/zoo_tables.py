"""The zoo bench's tables (markdown), printed from a run's JSON rows: kept apart from the
bench's orchestration so an earlier run prints the same way (`zoo_bench.py --tables`)."""

from __future__ import annotations

COST = ["model", "route", "verdict", "plain_s", "plain_mb", "check_x", "check_mb_x", "localize_x", "localize_mb_x",
        "repair_x", "repair_mb_x", "repair_verdict", "convert_mb", "exporter_mb", "convert_mb_x"]
FAULTS = ["model", "fault", "node", "detected", "localized", "typed", "type", "repaired", "held_out", "seconds"]
CONTENDERS = ["plain", "check", "localize", "repair", "convert", "exporter"]


def markdown(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join("" if row.get(c) is None else str(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def spread_rows(cost: list[dict]) -> list[dict]:
    """One line per (model, route, contender): median (min–max) of seconds and MB, and the ratio of
    medians to plain inference (convert and the exporter: convert to the exporter alone)."""
    out = []
    for row in cost:
        spread = row.get("spread")
        if not spread:  # a run from before the repeats (or a route that failed): no spread to show
            continue
        for contender in CONTENDERS:
            if f"{contender}_s" not in spread:
                continue
            if contender == "convert" and row.get("convert_mb_x") is not None:
                ratios = (row.get("convert_exporter_x"), row.get("convert_mb_x"), "exporter")
            elif contender in ("check", "localize", "repair"):
                ratios = (row.get(f"{contender}_x"), row.get(f"{contender}_mb_x"), "plain")
            else:
                ratios = (None, None, "")
            out.append({"model": row["model"], "route": row["route"], "contender": contender,
                        "runs": f"{len([o for o in row.get('order', []) if o == contender])}",
                        "seconds": spread[f"{contender}_s"], "peak MB": spread.get(f"{contender}_mb"),
                        "× time": ratios[0], "× RSS": ratios[1], "against": ratios[2]})
        out.append({"model": row["model"], "route": row["route"], "contender": "plain (warm-up, not in medians)",
                    "runs": "1", "seconds": row.get("plain_warmup_s"), "peak MB": row.get("plain_warmup_mb")})
    return out


def print_tables(cost: list[dict], matrix: list[dict], size: str) -> dict:
    applied = [r for r in matrix if r.get("applies")]
    summary = {k: f"{sum(bool(r[k]) for r in applied)}/{len(applied)}" for k in ("detected", "localized", "typed", "repaired")}
    repeats = sorted({r.get("repeats") for r in cost if r.get("repeats")})
    print(f"\n## Zoo cost ({size} sizes; ratios of medians to plain inference of both models on the same samples; "
          f"repeats: {repeats or 'one run each (an older run)'})\n")
    print(markdown(cost, COST))
    failures = [f"{r['model']}/{r['route']}: {f}" for r in cost for f in r.get("failures", [])]
    failures += [f"{r['model']}/{r['route']}: {r['error']}" for r in cost if r.get("error")]
    spread = spread_rows(cost)
    if spread:
        print(f"\n## Spread ({size} sizes; median (min–max) of each contender's runs, shuffled order; "
              "× = ratio of medians)\n")
        print(markdown(spread, ["model", "route", "contender", "runs", "seconds", "peak MB", "× time", "× RSS", "against"]))
    print(f"\nfailed runs (not in any median): {failures or 'none'}")
    print(f"\n## Fault matrix ({size} sizes; one repair per fault)\n")
    print(markdown(applied, FAULTS))
    skipped = [f"{r['model']}/{r['fault']} ({r.get('why')})" for r in matrix if not r.get("applies")]
    print(f"\nsummary: {summary}; not applicable: {skipped}")
    return summary
