"""Rich tables for the terminal. Takes result objects; computes nothing of its own."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from convrepair.convert import ConversionResult
    from convrepair.validate import Validation
    from convrepair.plugins import PluginRegistry

# Wide enough for the tables when stdout is a pipe or a CI log (rich would assume 80 columns).
console = Console(width=None if Console().is_terminal else 160)


def show(table: Table, drop: tuple[str, ...] = ()) -> None:
    """Print a table fitted to the console: numbers whole, text wrapped, least needed columns dropped."""
    from convrepair.report.fit import fit

    console.print(fit(table, console.width, drop))


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
    show(table)
    for result, check in zip(results, checks or []):
        name = escape(result.output.path.name)
        for reason in getattr(check, "reasons", None) or []:
            console.print(f"[bold red]discrepant[/] ({name}): {escape(reason)}")
        label = "guard" if getattr(check, "verdict", "") == "discrepant" else "inconclusive"
        for reason in getattr(check, "inconclusive", None) or []:
            console.print(f"[bold yellow]{label}[/] ({name}): {escape(reason)}")
        batch = getattr(check, "batch_dependent", None) or {}
        if batch.get("detected"):
            console.print(f"[bold yellow]batch-dependent[/] ({name}): outputs change by up to {batch['max_rel_change']:.3g} "
                          "relative when a sample runs alone instead of in a batch")


def plugin_rows(registry: PluginRegistry, deep: bool) -> list[dict[str, Any]]:
    rows = []
    for record in registry.records:
        plugin = record.plugin
        if plugin is None:
            rows.append({"plugin": record.entry_point, "status": "broken", "reason": record.error, "formats": [],
                         "registries": [], "converters": []})
            continue
        reason = plugin.unavailable_reason(deep=deep)
        rows.append(
            {
                "plugin": plugin.name,
                "entry_point": record.entry_point,
                "status": "available" if reason is None else "unavailable",
                "reason": reason,
                "formats": [f.name for f in plugin.formats],
                "registries": [r.name for r in plugin.registries],
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
    for column in ("plugin", "status", "formats / registries", "converters"):
        table.add_column(column)
    for row in rows:
        status = "[green]available[/]" if row["status"] == "available" else f"[red]{row['status']}[/]: {row['reason']}"
        converters = "\n".join(f"{c['name']}: {'/'.join(c['from'])} → {c['to']}" for c in row["converters"])
        provides = ", ".join(row["formats"] + [f"registry:{name}" for name in row.get("registries", [])])
        table.add_row(row["plugin"], status, provides, converters)
    show(table)


def short(name: str, width: int = 48) -> str:
    """TFLite joins fused op names with ';' — show the first, and keep it to one column."""
    head = name.split(";")[0]
    return head if len(head) <= width else "…" + head[-(width - 1):]


def _fmt(value: float | None, spec: str = ".3g") -> str:
    return "n/a" if value is None else format(value, spec)


def synthetic_data(origin: str | None) -> bool:
    """Was the check run on generated noise (`uniform[low, high]`, no --data) rather than real samples?"""
    return bool(origin) and origin.startswith("uniform[")


def render_check(report: dict[str, Any]) -> None:
    """The check report for a person: verdict, rounds, outputs, and where and why it diverges."""
    verdict = report["verdict"]
    colour = "green" if verdict == "equivalent" else "red"
    console.print(
        f"[bold]{report['source']['path']}[/] ({report['source']['format']}) vs "
        f"[bold]{report['target']['path']}[/] ({report['target']['format']}): [bold {colour}]{verdict.upper()}[/]"
    )
    render_guard_and_batch(report)
    if synthetic_data(report.get("data")):
        console.print(f"[bold yellow]data:[/] {escape(report['data'])} random inputs, not real data (no --data): "
                      "a verdict on noise says little about the inputs the model will see; give --data")
    agreement = report["label_agreement"]
    if agreement is not None:
        bound = report["disagreement_upper_bound"]
        distinct = report.get("distinct_samples") or report["samples"]
        console.print(
            f"label agreement {agreement:.2%} over {report['samples']} samples in {len(report['rounds'])} rounds; "
            f"{len(report['flips'])} flip(s) among {distinct} distinct samples; 95% upper bound on the flip rate {bound:.2%}"
        )
    if report.get("accuracy"):
        acc = report["accuracy"]
        console.print(f"accuracy on labels: source {acc['source']:.2%}, target {acc['target']:.2%}")
    for reason in report["reasons"]:
        console.print(f"  [red]•[/] {reason}")
    rounds = Table(title="rounds", title_justify="left")
    for column in ("seed", "n", "label agr.", f"top-{report['top_k']} agr.", "max |Δ|", "max rel", "min cosine"):
        rounds.add_column(column, justify="right")
    for r in report["rounds"]:
        rounds.add_row(
            str(r["seed"]), str(r["n"]), _fmt(r["label_agreement"], ".2%"), _fmt(r["topk_agreement"], ".2%"),
            _fmt(r["max_abs"]), _fmt(r["max_rel"]), _fmt(r["cosine_min"], ".6f"),
        )
    show(rounds)
    outputs = Table(title="outputs", title_justify="left")
    for column in ("#", "source", "target", "max |Δ|", "SQNR dB", "outside tol."):
        outputs.add_column(column)
    for o in report["outputs"]:
        outputs.add_row(str(o["index"]), o["source_name"], o["target_name"], _fmt(o["max_abs"]), _fmt(o["sqnr_db"], ".1f"), f"{o['violations']}/{o['elements']}")
    show(outputs)
    loc = report.get("localization")
    if loc:
        render_localization(loc)
    render_lenses(report.get("lenses"))


def render_guard_and_batch(report: dict[str, Any]) -> None:
    """The guard's reasons (beside the evidence when differences were found) and batch dependence."""
    label = "guard (the differences found outrank it)" if report["verdict"] == "discrepant" else "inconclusive"
    for reason in report.get("inconclusive_reasons") or []:
        console.print(f"[bold yellow]{label}:[/] {escape(reason)}")
    for note in (report.get("guard") or {}).get("notes") or []:  # what the guard could not check, and why
        console.print(f"[dim]guard:[/] {escape(note)}")
    batch = report.get("batch_dependent") or {}
    if batch.get("detected"):
        labels = batch.get("label_changes")
        console.print(f"[bold yellow]batch-dependent:[/] the target's outputs change when a sample runs alone instead of "
                      f"in a batch (up to {batch['max_rel_change']:.3g} relative on {batch['samples']} samples"
                      + (f", {labels} label change(s))" if labels is not None else ")")
                      + "; its answers depend on which samples share a batch (dynamic quantization, batch statistics)")


def render_localization(loc: dict[str, Any]) -> None:
    layers = Table(title="layers (aligned, topological order)", title_justify="left")
    for column in ("source layer", "target layer", "kind", "rel L2", "max |Δ|", "cosine", "status"):
        layers.add_column(column)
    styles = {"ok": "green", "diverged": "bold red", "carried": "yellow", "fused": "cyan", "incomparable": "dim"}
    for row in loc["layers"]:
        layers.add_row(
            short(row["source_layer"]), short(row["target_layer"]), row["kind"], _fmt(row["rel_l2"]), _fmt(row["max_abs"]),
            _fmt(row["cosine"], ".6f"), f"[{styles.get(row['status'], '')}]{row['status']}[/]",
        )
    show(layers)
    fault = loc["fault"]
    if fault is None:
        console.print("[green]no aligned layer diverges[/]")
        return
    first = loc.get("first_divergent")
    where = f" at [bold]{short(first['target_layer'])}[/] (source {short(first['source_layer'])})" if first else ""
    if first and first.get("node") and first["node"] != first["target_layer"]:
        where += f", op [bold]{short(first['node'])}[/]"
    console.print(f"fault: [bold red]{fault['type']}[/]{where}\n  {fault['detail']}")
    shadow = loc.get("shadow")
    if shadow and shadow.get("confirmed") is not None:
        verdict = "diverges in isolation: the fault is here" if shadow["confirmed"] else "agrees in isolation: carried from earlier"
        console.print(f"  shadow run (target segment fed the source's input): {verdict}")


def render_repair(report: dict[str, Any]) -> None:
    from convrepair.report.summary import kept

    verdict = report["verdict"]
    colour = {"repaired": "green", "already_equivalent": "green", "improved": "yellow", "unproven": "yellow"}.get(verdict, "red")
    console.print(f"[bold]repair[/] {report['target']['path']} against {report['source']['path']}: [bold {colour}]{verdict.upper()}[/]")
    for reason in (report.get("check_before") or {}).get("inconclusive_reasons") or []:
        console.print(f"[bold yellow]inconclusive:[/] {escape(reason)}")
    for skipped in report.get("skipped_for_time") or []:
        console.print(f"[yellow]cut short for time:[/] {escape(skipped)}")
    before = report["check_before"]
    loc = before.get("localization") or {}
    if loc.get("fault"):
        console.print(f"before: {before['verdict']}, label agreement {_fmt(before['label_agreement'], '.2%')}, "
                      f"fault [bold]{loc['fault']['type']}[/]: {loc['fault']['detail']}")
    table = Table(title="attempts", title_justify="left")
    for column in ("#", "kind", "location", "kept", "label agr. (search)", "why"):
        table.add_column(column)
    for i, attempt in enumerate(report["attempts"], 1):
        patch = attempt["patch"] or {}
        table.add_row(str(i), attempt["kind"], short(patch.get("location", "") or ""), kept(attempt),
                      _fmt(attempt["label_agreement"], ".2%"), attempt["reason"])
    show(table)
    for attempt in report["attempts"]:
        cost = attempt.get("cost") or {}
        if "repair_rate_search" in cost:
            console.print(f"{attempt['kind']}: {cost['optimiser']} on {cost['device']}, {cost['negatives']} negatives / "
                          f"{cost['positives']} positives, repair rate {cost['repair_rate_search']:.0%}, break rate "
                          f"{cost['break_rate_search']:.1%} (search data), {cost['evaluations']} evaluations "
                          f"({cost['evaluations_per_second']:.0f}/s)")
    choice = report.get("choice")
    if choice:
        split = choice.get("split", "held-out")
        options = Table(title=f"repairs offered side by side, chosen on the {split} split (policy {choice['policy']}: "
                              f"{choice['why']})", title_justify="left")
        for column in ("kind", f"{split} agreement", f"{split} flips", "size", "inference ms (batch 256)", "chosen"):
            options.add_column(column)
        target = choice["target"]
        options.add_row("target as converted", "", str(target["held_out_flips"]), human_size(target["bytes"]), _fmt(target["inference_ms"]), "")
        for row in choice["options"]:
            options.add_row(row["kind"], _fmt(row["held_out_label_agreement"], ".2%"), str(row["held_out_flips"]),
                            human_size(row["bytes"]), _fmt(row["inference_ms"]), "[bold green]yes[/]" if row["chosen"] else "no")
        show(options)
    held = report.get("check_before_held_out")
    after = report.get("check_after")
    splits = report.get("splits") or {}
    if splits:
        console.print("splits: " + ", ".join(f"{name.replace('_', '-')} {count}" for name, count in splits.items())
                      + " samples (disjoint; the verdict reads only the held-out split)")
    if held:
        console.print(f"held-out before: {held['verdict']}, label agreement {_fmt(held['label_agreement'], '.2%')}, "
                      f"{len(held['flips'])} flip(s)")
    if after:
        console.print(f"held-out check ({splits.get('held_out')} samples no attempt or choice has seen): "
                      f"{after['verdict']}, label agreement {_fmt(after['label_agreement'], '.2%')}, {len(after['flips'])} flip(s), "
                      f"max |Δ| {_fmt(after['outputs'][0]['max_abs'])}")
    render_repair_cost(report.get("cost"))
    render_lenses(report.get("lenses"))
    if report.get("verdict_reason"):
        console.print(f"[bold {colour}]{verdict}[/]: {escape(report['verdict_reason'])}")
    if report.get("output"):
        console.print(f"written: {report['output']['path']}")


def render_repair_cost(cost: dict[str, Any] | None) -> None:
    """What the repair costs: size, latency, precision mix, before → after."""
    if not cost:
        return
    before, after = cost["before"], cost["after"]
    line = (f"cost: size {human_size(before['bytes'])} → {human_size(after['bytes'])} ({cost['size_ratio']:.2f}×), "
            f"latency {_fmt(before['latency_ms'])} → {_fmt(after['latency_ms'])} ms per batch of {cost['latency_batch']}")
    if cost.get("latency_ratio") is not None:
        line += f" ({cost['latency_ratio']:.2f}×)"
    console.print(line)
    mix_before, mix_after = before.get("precision"), after.get("precision")
    if mix_before and mix_after:
        def mix(m: dict[str, Any]) -> str:
            total = max(sum(m["parameters"].values()), 1)
            shares = sorted(((kind, count / total) for kind, count in m["parameters"].items()), key=lambda kv: -kv[1])
            return ", ".join(f"{kind} {share:.0%}" for kind, share in shares if share >= 0.005) or "none"
        console.print(f"precision: parameters {mix(mix_before)} → {mix(mix_after)}; quantized ops "
                      f"{mix_before['quantized_ops']} → {mix_after['quantized_ops']}")
    if cost.get("layers_kept_fp32"):
        console.print(f"kept in fp32: {escape(', '.join(cost['layers_kept_fp32']))}")


def render_lenses(lenses: dict[str, Any] | None) -> None:
    """The reliability lenses side by side for every model: one summary table, then what stands out."""
    from convrepair.report.summary import available, roles, summary_rows, unavailable

    if not lenses:
        return
    table = Table(title=f"reliability lenses ({lenses['samples']} samples)", title_justify="left")
    for column in ("model", "accuracy", "ECE", "T", "ECE → after T", "mean conf.", "mean entropy", "KS p (conf.)", "crossed τ", "PGD acc."):
        table.add_column(column, justify="right")
    for r in summary_rows(lenses):
        scaled = f"{_fmt(r['ece_before'], '.4f')} → {_fmt(r['ece_after'], '.4f')}" if r["ece_after"] is not None else "n/a"
        table.add_row(r["model"], _fmt(r["accuracy"], ".2%"), _fmt(r["ece"], ".4f"), _fmt(r["temperature"]), scaled,
                      _fmt(r["mean_confidence"], ".3f"), _fmt(r["mean_entropy"], ".3f"), _fmt(r["confidence_shift_p"], ".2g"),
                      _fmt(r["crossed_tau"], "d"), _fmt(r["pgd_accuracy"], ".1%"))
    show(table, drop=("ECE", "KS p (conf.)", "mean entropy", "crossed τ", "mean conf.", "T"))  # ECE: also in "ECE → after T"
    robustness = available(lenses, "robustness")
    if robustness:
        attacks = Table(title=f"robustness: accuracy under attack (crafted on {robustness['crafted_on']} via "
                              f"{robustness['gradients_via']}, {robustness['n']} samples)", title_justify="left")
        order = roles(lenses)
        for column in ("attack", "ε", *order):
            attacks.add_column(column, justify="right")
        attacks.add_row("clean", "0", *[_fmt(robustness["clean_accuracy"][r], ".1%") for r in order])
        for point in sorted(robustness["points"], key=lambda p: (p["attack"], p["epsilon"])):
            attacks.add_row(point["attack"], f"{point['epsilon']:g}", *[_fmt(point["accuracy"][r], ".1%") for r in order])
        show(attacks)
        for flag in robustness["flags"]:
            console.print(f"  [bold red]flag:[/] {escape(flag)}")
        for note in robustness.get("notes") or []:  # below the target but level with the source: the method, not the repair
            console.print(f"  note: {escape(note)}")
    ensemble = (available(lenses, "uncertainty") or {}).get("ensemble")
    if ensemble:
        console.print(f"uncertainty over {', '.join(ensemble['models'])}: variation ratio {ensemble['variation_ratio_mean']:.3f}, "
                      f"epistemic {ensemble['epistemic']:.3f} of total entropy {ensemble['total_entropy']:.3f} nats")
    occlusion = available(lenses, "occlusion")
    if occlusion:
        changed = [s for s in occlusion["samples"] if s["changed"]]
        console.print(f"occlusion maps ({occlusion['patch']}×{occlusion['patch']} patch): {len(changed)} sample(s) whose label "
                      f"changed, {len(occlusion['samples']) - len(changed)} unchanged — see `convrepair show --html`")
    for name, reason in unavailable(lenses).items():
        console.print(f"  [yellow]{name}[/]: not computed — {escape(reason)}")
    console.print("lens cost: " + ", ".join(f"{k} {v:.2f} s" for k, v in lenses.get("seconds", {}).items()))


def render_model_repair(report: dict[str, Any]) -> None:
    colour = "green" if report["verdict"] == "repaired" else "red"
    against = f" against {report['previous']}" if report.get("previous") else ""
    console.print(f"[bold]{report['mode']} repair[/] of {report['model']['path']}{against}: [bold {colour}]{report['verdict'].upper()}[/]")
    for attempt in report["attempts"]:
        console.print(f"  {attempt['kind']}: {attempt['reason']}")
    held = report.get("held_out")
    if held:
        console.print(f"  held-out accuracy {held['accuracy_before']:.2%} → {held['accuracy_after']:.2%}; "
                      f"repair rate {held['repair_rate']:.0%} of {held['negatives']}, break rate {held['break_rate']:.2%}")
    render_lenses(report.get("lenses"))
    if report.get("output"):
        console.print(f"written: {report['output']['path']}")


def render_review(rows: list[dict[str, Any]], status: str) -> None:
    table = Table(title=f"repair logs ({status})", title_justify="left")
    for column in ("status", "verdict", "target", "finished", "signed by", "log"):
        table.add_column(column)
    styles = {"pending": "yellow", "approved": "green", "rejected": "red", "invalid": "bold red"}
    for row in rows:
        table.add_row(f"[{styles.get(row['status'], 'dim')}]{row['status']}[/]", str(row.get("verdict")),
                      short(str(row.get("target"))), str(row.get("finished", "")), str(row.get("signed_by", "")), row["log"])
    show(table)
    for row in rows:  # a log that does not verify: say why, one line each
        if row.get("reason"):
            console.print(f"[bold red]invalid[/] {escape(row['log'])}: {escape(row['reason'])}")
    if not rows:
        console.print("no logs")


def render_log(statement: dict[str, Any], envelope: dict[str, Any]) -> None:
    """A signed repair log for a person: what changed, where, why, and the numbers."""
    predicate = statement["predicate"]
    repair = dict(predicate["repair"], lenses=predicate.get("lenses"))
    console.print(f"[bold]repair log[/] job {predicate['job']['id']} ({predicate['job']['started']} → {predicate['job']['finished']}), "
                  f"signed by {envelope['signatures'][0]['keyid'][:16]}…")
    if "check_before" in repair:
        render_repair(repair)
        loc = (repair["check_before"] or {}).get("localization")
        if loc:
            render_localization(loc)
    else:
        render_model_repair(repair)
    files = Table(title="files (sha256)", title_justify="left")
    for column in ("role", "file", "sha256"):
        files.add_column(column)
    for entry in predicate["files"]:
        files.add_row(entry["role"], entry["name"], entry["sha256"][:16] + "…")
    show(files)


def render_status(jobs: list[dict[str, Any]]) -> None:
    import datetime as dt

    table = Table(title="convrepair jobs", title_justify="left")
    for column in ("id", "model", "version", "target", "state", "attempts", "executor", "node", "updated", "error / result"):
        table.add_column(column)
    styles = {"queued": "yellow", "running": "cyan", "done": "green", "failed": "red"}
    for job in jobs:
        when = dt.datetime.fromtimestamp(job["updated"]).strftime("%H:%M:%S")
        detail = job["error"] or ""
        result = job["result"]
        if isinstance(result, str):  # a queue row as stored (`status --json` gives it as an object)
            result = __import__("json").loads(result)
        if not detail and result:
            detail = str(result.get("verdict", ""))
        node = job.get("host") or ""
        if job.get("node"):  # Ray's node id: its first 8 hex digits say which
            node = f"{node} ({job['node'][:8]})" if node else job["node"][:8]
        table.add_row(str(job["id"]), job["model"], job["version"], job["target"],
                      f"[{styles.get(job['state'], '')}]{job['state']}[/]", str(job["attempts"]), job.get("executor") or "",
                      node, when, detail[:80])
    show(table)
