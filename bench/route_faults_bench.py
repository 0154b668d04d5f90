"""The fault matrix on the deployment routes: FetaFix's fault classes in the converted target.

    python bench/route_faults_bench.py [--models digits,resnet18] [--routes openvino,litert]
                                       [--faults weights,biases,...] [--json OUT.json] [--work DIR]

The realistic shape: the fault is in what the converter produced, and the target is checked
against the clean source.
- `openvino`: the source `.pt2` → ONNX (the real CLI), one ZOO_FAULTS class injected into that ONNX
  (fixtures/faults.py, as bench/zoo_bench.py does), the faulty ONNX → OpenVINO IR (the real CLI).
- `litert`: the same class injected into the PyTorch program (an FX edit of `ExportedProgram.module()`,
  re-exported with the source's dynamic batch), the faulty `.pt2` → `.tflite` with litert-torch.
Then `repair SOURCE FAULTY --data DATA` runs once per row (a subprocess of the real CLI), and the row
is read from its report as zoo_bench reads it: detected (`check_before` discrepant), localized
(strict: the op the localization names — `first_divergent.node` or its target layer — is the
injected one; for an inserted op, that op or the tensor it hangs on), typed (the fault type the class
should get), repaired (verdict `repaired` and the repair's own held-out split `equivalent`). A route
repair does not write to says so in `repair` (its own reason), and the row stays. A class that does
not apply to a model (no BatchNorm left, a one-channel input) is a row saying why.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "fixtures")]

PY = sys.executable
OUT = ROOT / "fixtures" / "out"
MODELS = {  # name: (source .pt2, data, held-out data)
    "digits": (OUT / "torch_cnn.pt2", OUT / "digits_test_nchw.npz", OUT / "digits_repair_nchw.npz"),
    "resnet18": (OUT / "zoo" / "resnet18.pt2", OUT / "zoo" / "resnet18_data.npz", OUT / "zoo" / "resnet18_holdout.npz"),
}
COLUMNS = ["route", "model", "fault", "node", "detected", "localized", "typed", "type", "named", "repair", "seconds"]


def cli(*args, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "convrepair", *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=tempfile.gettempdir())


def _last_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in (result.stderr or result.stdout).strip().splitlines() if line.strip()]
    return lines[-1][:160] if lines else f"exit {result.returncode}"


# ---- the faulty targets --------------------------------------------------------------------------------------------


def openvino_target(source: Path, fault: str, work: Path) -> tuple[Path, str, str, Path | None]:
    """(faulty IR, injected node, expected type, faulty ONNX): the fault injected into the source's ONNX."""
    from faults import inject_zoo_fault

    onnx_path = work / f"{source.stem}.onnx"
    if not onnx_path.exists():
        result = cli("convert", source, "--to", "onnx", "--out", onnx_path, "-q")
        if result.returncode:
            raise RuntimeError(f"convert to onnx: {_last_line(result)}")
    if fault == "channel_order":  # fixtures/faults.py gathers [2, 1, 0] whatever the channel count
        import onnx

        dims = [d.dim_value for d in onnx.load(str(onnx_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim]
        if len(dims) == 4 and 3 not in (dims[1], dims[3]):
            raise KeyError(f"the input has {dims[1]} channel(s), not 3")
    faulty = work / f"ov-{fault}.onnx"
    node, expected = inject_zoo_fault(onnx_path, faulty, fault)
    ir = work / f"ov-{fault}.openvino"
    shutil.rmtree(ir, ignore_errors=True)
    result = cli("convert", faulty, "--to", "openvino", "--out", ir, "-q")
    if result.returncode:
        raise RuntimeError(f"convert to openvino: {_last_line(result)}")
    return ir, node, expected, faulty


def litert_target(source: Path, fault: str, work: Path) -> tuple[Path, str, str, Path | None]:
    """(faulty .tflite, injected node, expected type, None): the fault injected into the PyTorch program."""
    faulty = work / f"lt-{fault}.pt2"
    node, expected = inject_program_fault(source, faulty, fault)
    shutil.copy(source.with_name(source.name + ".convrepair.json"), faulty.with_name(faulty.name + ".convrepair.json"))
    out = work / f"lt-{fault}.tflite"
    for old in work.glob(f"{out.name}*"):
        old.unlink()
    result = cli("convert", faulty, "--to", "litert", "--out", out, "-q")
    if result.returncode:
        raise RuntimeError(f"convert to litert: {_last_line(result)}")
    return out, node, expected, None


# ---- the fault classes on a PyTorch program (FX edits of its unlifted module) ------------------------------------------


def inject_program_fault(source: Path, out: Path, fault: str) -> tuple[str, str]:
    """ZOO_FAULTS' classes on `torch.export` programs: edit `program.module()`'s aten graph, re-export
    with the source's dynamic batch, save. KeyError where the class does not apply."""
    import torch

    program = torch.export.load(str(source))
    gm = program.module()
    node, expected = PROGRAM_FAULTS[fault](gm)
    gm.graph.lint()
    gm.recompile()
    example = tuple(program.example_inputs[0])
    batch = torch.export.Dim("batch", min=1, max=4096)
    names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    exported = torch.export.export(gm, example, dynamic_shapes={names[0]: {0: batch}} if len(names) == 1 else None)
    torch.export.save(exported, str(out))
    return node, expected


def _calls(gm, *targets: str) -> list:
    return [n for n in gm.graph.nodes if n.op == "call_function" and str(n.target) in targets]


def _param(gm, node):
    try:
        return gm.get_parameter(node.target)
    except AttributeError:
        return gm.get_buffer(node.target)


def _weighted(gm) -> list:
    return [n for n in _calls(gm, "aten.conv2d.default", "aten.linear.default") if n.args[1].op == "get_attr"]


def p_weights(gm):
    node = _weighted(gm)[len(_weighted(gm)) // 3]
    with torch_no_grad():
        weight = _param(gm, node.args[1])
        weight[0] += 0.5 * weight.abs().max()
    return node.name, "weights"


def p_biases(gm):
    layers = [n for n in _weighted(gm) if len(n.args) > 2 and n.args[2] is not None and _param(gm, n.args[2]).abs().max() > 0]
    node = layers[len(layers) // 3]
    with torch_no_grad():
        _param(gm, node.args[2]).zero_()
    return node.name, "biases"


def p_pads(gm):
    import torch

    for node in _calls(gm, "aten.conv2d.default"):
        kernel = _param(gm, node.args[1]).shape[-2:]
        padding = list(node.args[4]) if len(node.args) > 4 else [0, 0]
        if tuple(kernel) == (3, 3) and padding[0] == padding[1] > 0:
            p = padding[0]
            with gm.graph.inserting_before(node):
                padded = gm.graph.call_function(torch.ops.aten.constant_pad_nd.default, (node.args[0], [0, 2 * p, 0, 2 * p], 0.0))
            args = list(node.args) + [[1, 1]] * (4 - len(node.args))
            args[0], args[4] = padded, [0, 0]
            node.args = tuple(args)
            return node.name, "hyperparameter"
    raise KeyError("no 3x3 conv2d with symmetric padding")


def p_epsilon(gm):
    nodes = _calls(gm, "aten.batch_norm.default")
    if not nodes:
        raise KeyError("no batch_norm in the program")
    node = nodes[0]
    args = list(node.args)
    args[7] = 1.0  # batch_norm(input, weight, bias, mean, var, training, momentum, eps, cudnn)
    node.args = tuple(args)
    return node.name, "hyperparameter"


def p_activation(gm):
    import torch

    acts = _calls(gm, "aten.relu.default")
    node = acts[len(acts) // 3]
    node.target, node.args = torch.ops.aten.leaky_relu.default, (node.args[0], 0.3)
    return node.name, "hyperparameter"


def p_dropped_op(gm):
    acts = _calls(gm, "aten.relu.default")
    node = acts[len(acts) // 3]
    node.replace_all_uses_with(node.args[0])
    gm.graph.erase_node(node)
    return node.name, "graph_structure"


def _at_input(gm, make):
    """Insert make(graph, x) right after the first input and feed every user of x with it."""
    x = next(n for n in gm.graph.nodes if n.op == "placeholder")
    with gm.graph.inserting_after(x):
        new = make(gm.graph, x)
    x.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)
    return new.name


def p_input_scale(gm):
    import torch

    return _at_input(gm, lambda g, x: g.call_function(torch.ops.aten.mul.Tensor, (x, 2.0))), "preprocessing"


def p_layout(gm):
    import torch

    return _at_input(gm, lambda g, x: g.call_function(torch.ops.aten.permute.default, (x, [0, 1, 3, 2]))), "input_layout"


def p_channel_order(gm):
    import torch

    x = next(n for n in gm.graph.nodes if n.op == "placeholder")
    shape = x.meta.get("val").shape if x.meta.get("val") is not None else None
    if shape is None or shape[1] != 3:
        raise KeyError(f"the input has {shape[1] if shape is not None else '?'} channel(s), not 3")
    return _at_input(gm, lambda g, x: g.call_function(torch.ops.aten.flip.default, (x, [1]))), "preprocessing"


def torch_no_grad():
    import torch

    return torch.no_grad()


PROGRAM_FAULTS = {"weights": p_weights, "biases": p_biases, "pads": p_pads, "epsilon": p_epsilon,
                  "activation": p_activation, "input_scale": p_input_scale, "layout": p_layout,
                  "channel_order": p_channel_order, "dropped_op": p_dropped_op}
ROUTES = {"openvino": openvino_target, "litert": litert_target}


# ---- one row -----------------------------------------------------------------------------------------------------


def row(route: str, model: str, fault: str, work: Path) -> dict:
    source, data, _ = MODELS[model]
    started = time.perf_counter()
    base = {"route": route, "model": model, "fault": fault}
    try:
        target, node, expected, faulty_onnx = ROUTES[route](source, fault, work)
    except (KeyError, IndexError, StopIteration) as exc:
        return base | {"applies": False, "why": f"does not apply: {str(exc)[:100]}"}
    except RuntimeError as exc:  # the converter refused or failed on the faulty model: a result, said
        return base | {"applies": False, "why": str(exc)[:160]}
    report_path = work / f"{route}-{fault}.repair.json"
    out = work / f"{route}-{fault}.repaired{target.suffix}"
    for old in work.glob(f"{out.name}*"):
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    result = cli("repair", source, target, "--out", out, "--data", data, "--budget-seconds", "60", "--json", report_path)
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    before = report.get("check_before") or {}
    located = before.get("localization") or {}
    first = located.get("first_divergent") or {}
    fault_json = located.get("fault") or {}
    named = {first.get("target_layer"), first.get("node")} - {None}
    localized = node in named or (faulty_onnx is not None and node.startswith("injected") and _hangs_on(faulty_onnx, node) in named)
    attempts = report.get("attempts") or []
    refused = [a["reason"] for a in attempts if not a.get("applied") and "written to" in (a.get("reason") or "")]
    held_out = (report.get("check_after") or {}).get("verdict")
    if report.get("verdict") == "repaired" and held_out == "equivalent":
        repair = "repaired (held-out equivalent)"
    elif refused and len(refused) == len(attempts):
        repair = "not supported on this route: " + refused[0]
    else:
        repair = f"{report.get('verdict') or 'failed: ' + _last_line(result)}" + (f", held-out {held_out}" if held_out else "")
    return base | {
        "applies": True, "node": node, "expected_type": expected, "detected": before.get("verdict") == "discrepant",
        "localized": bool(localized), "typed": fault_json.get("type") == expected, "type": fault_json.get("type"),
        "named": first.get("node"), "method": (located.get("ir") or {}).get("method"),
        "detail": (fault_json.get("detail") or "")[:200], "repair": repair, "exit": result.returncode,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _hangs_on(path: Path, node: str) -> str | None:
    from faults import hangs_on

    return hangs_on(path, node)


def print_table(rows: list[dict]) -> None:
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for r in rows:
        if not r.get("applies"):
            print(f"| {r['route']} | {r['model']} | {r['fault']} | — | {r['why']} | | | | | | |")
            continue
        cells = [r["route"], r["model"], r["fault"], r["node"], r["detected"], r["localized"], r["typed"],
                 f"{r['type']} (want {r['expected_type']})", r["named"], r["repair"], r["seconds"]]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    applied = [r for r in rows if r.get("applies")]
    for route in sorted({r["route"] for r in applied}):
        mine = [r for r in applied if r["route"] == route]
        counts = {k: sum(bool(r[k]) for r in mine) for k in ("detected", "localized", "typed")}
        repaired = sum(r["repair"].startswith("repaired") for r in mine)
        print(f"{route}: {len(mine)} injected; detected {counts['detected']}, localized {counts['localized']}, "
              f"typed {counts['typed']}, repaired {repaired}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="digits,resnet18")
    parser.add_argument("--routes", default="openvino,litert")
    parser.add_argument("--faults", default=",".join(PROGRAM_FAULTS))
    parser.add_argument("--json", type=Path, default=OUT / "route-faults-bench.json")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a fresh temporary one)")
    args = parser.parse_args(argv)
    work_root = args.work or Path(tempfile.mkdtemp(prefix="route-faults-"))
    rows = []
    for model in args.models.split(","):
        for route in args.routes.split(","):
            work = work_root / f"{model}-{route}"
            work.mkdir(parents=True, exist_ok=True)
            for fault in args.faults.split(","):
                rows.append(row(route, model, fault, work))
                print(json.dumps(rows[-1], default=str), flush=True)
                args.json.write_text(json.dumps({"rows": rows, "partial": True}, indent=2, default=str))
    args.json.write_text(json.dumps({"rows": rows}, indent=2, default=str))
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
