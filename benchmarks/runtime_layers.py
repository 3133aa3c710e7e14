"""Where a compiled model's time goes: each kernel call of actzip's graph against onnxruntime's nodes.

For one setting, the model is compiled (actzip's own graph, whatever `compile` would pick) and
exported to onnxruntime; both run the same batch `--rounds` times in turns, one thread each way as
the process has:
- actzip: forward hooks time each conv inside whole forwards. A conv that another one runs fused
  (a producer inside its depthwise conv, that one inside its 1x1 conv) passes its input through and
  takes no time of its own, so each row is one kernel call: the convs it runs and their time.
- onnxruntime: its profiler gives each node's time in the same forwards; its Conv nodes are matched
  to the model's convs in the order they run (their weight shapes are checked), and a row's
  onnxruntime time is the sum over its convs.
Times are medians over the rounds (ms). Hooks and the profiler add a little to each, so the
whole-forward times in runtime.json are the figures to quote; this says which layers win and lose.

    python benchmarks/runtime_layers.py --l1-run runs/sparsify_table/mobilenet-v1-l1-0.2-macs-kd0.5-15ep
    python benchmarks/runtime_layers.py --photos   # pretrained Lite0 on the bundled photos, batch 8
    python benchmarks/runtime_layers.py --masks resnet18 0.3   # random pixel masks, batch 8
    python benchmarks/runtime_layers.py --table    # docs/results/runtime_layers.md from the JSON
A run replaces the JSON's setting of the same CPU, model, batch and thread count and keeps the rest.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from machine import cpu

HERE = Path(__file__).parent


def conv_order(model: torch.nn.Module, x: torch.Tensor) -> list[tuple[str, tuple]]:
    """(name, weight shape) of each conv of `model` in the order a forward runs them."""
    order, hooks = [], []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            hooks.append(m.register_forward_hook(lambda m, a, o, n=name: order.append((n, tuple(m.weight.shape)))))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return order


def onnxruntime_nodes(model: torch.nn.Module, x: torch.Tensor, rounds: int) -> tuple[list[tuple[tuple, float]], float]:
    """Each Conv node's (weight shape, median ms) in the order it runs, and the median whole run (ms)."""
    import onnxruntime

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"])
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = torch.get_num_threads(), 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_profiling, options.profile_file_prefix = True, str(Path(tmp) / "profile")
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(rounds + 3):
            session.run(None, {"x": x.numpy()})
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = [e["dur"] for e in events if e.get("name") == "model_run"][3:]
    nodes, shapes = collections.defaultdict(list), {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["args"].get("op_name") == "Conv":
            nodes[e["name"]].append(e["dur"])
            shapes[e["name"]] = tuple(e["args"]["input_type_shape"][1]["float"])
    return [(shapes[n], statistics.median(v[3:]) / 1e3) for n, v in nodes.items()], statistics.median(runs) / 1e3


def same_conv(ours: tuple, theirs: tuple) -> bool:
    """Whether an onnxruntime Conv node's weight shape is this conv's: its blocked layout pads the
    channel counts to a multiple of 8 or 16."""
    return ours[2:] == theirs[2:] and all(
        theirs_n in (n, -(-n // 8) * 8, -(-n // 16) * 16) for n, theirs_n in zip(ours[:2], theirs[:2]))


def matched(order: list[tuple[str, tuple]], nodes: list[tuple[tuple, float]], window: int = 3) -> dict[str, float]:
    """Each conv's onnxruntime ms: convs and Conv nodes paired in order, each conv with the first
    node of its weight shape among the next `window` unpaired ones (onnxruntime may run a residual
    block's downsample conv before the block's second conv, PyTorch after it)."""
    if len(order) != len(nodes):
        raise SystemExit(f"onnxruntime has {len(nodes)} Conv nodes, the model {len(order)} convs")
    left, ms = list(nodes), {}
    for name, shape in order:
        i = next((i for i, (theirs, _) in enumerate(left[:window]) if same_conv(shape, theirs)), None)
        if i is None:
            raise SystemExit(f"no onnxruntime Conv node matches {name} {shape}")
        ms[name] = left.pop(i)[1]
    return ms


def actzip_calls(compiled, x: torch.Tensor, rounds: int) -> tuple[dict[str, float], float]:
    """Each conv's median ms inside whole forwards of the compiled graph, and the median forward."""
    from actzip.runtime.conv import CompiledConv2d

    graph = compiled.graph_module
    times, started, hooks = collections.defaultdict(list), {}, []
    for name, m in graph.named_modules():
        if isinstance(m, CompiledConv2d):
            hooks.append(m.register_forward_pre_hook(lambda m, a, n=name: started.__setitem__(n, time.perf_counter())))
            hooks.append(m.register_forward_hook(
                lambda m, a, o, n=name: times[n].append(time.perf_counter() - started[n])))
    forwards = []
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        for r in range(rounds + 3):
            t = time.perf_counter()
            graph(x)
            forwards.append(time.perf_counter() - t)
    for h in hooks:
        h.remove()
    return {n: 1e3 * statistics.median(v[3:]) for n, v in times.items()}, 1e3 * statistics.median(forwards[3:])


def calls(compiled) -> list[list[str]]:
    """The convs of each kernel call, in order: a conv that runs others fused, then those."""
    from actzip.runtime.conv import CompiledConv2d

    convs = {n: m for n, m in compiled.graph_module.named_modules() if isinstance(m, CompiledConv2d)}
    names = {id(m): n for n, m in convs.items()}
    groups = []
    for name, m in convs.items():
        if m.passes_input:
            continue
        group = [m] if m.fused_depthwise is None else [m.fused_depthwise, m]
        producer = getattr(group[0], "fused_producer", None)
        groups.append([names[id(c)] for c in ([producer] if producer is not None else []) + group])
    return groups


def measure(model: torch.nn.Module, x: torch.Tensor, label: str, rounds: int) -> dict:
    """`model` compiled against onnxruntime on the same model without its masks (the dense model a
    user would run), conv by conv."""
    from actzip.runtime import compile
    from actzip.runtime.fold import fold_batchnorm
    from actzip.sparsify.pixelmask import remove_pixel_mask_hooks

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = compile(model, x, engines=("actzip",))
    order = conv_order(model, x)
    dense = copy.deepcopy(model)
    remove_pixel_mask_hooks(dense)
    ort_nodes, ort_ms = onnxruntime_nodes(fold_batchnorm(dense), x, rounds)
    ort = matched(order, ort_nodes)
    own, forward = actzip_calls(compiled, x, rounds)
    choices = {c.name: c for c in compiled.layers}
    rows = []
    for group in calls(compiled):
        rows.append({"convs": group, "paths": [choices[n].path for n in group],
                     "input_zeros": [choices[n].input_zeros for n in group],
                     "actzip_ms": own[group[-1]],  # the conv that runs the call
                     "onnxruntime_ms": sum(ort[n] for n in group)})
    return {"cpu": cpu(), "model": label, "batch": x.shape[0], "threads": torch.get_num_threads(),
            "actzip_forward_ms": forward, "onnxruntime_run_ms": ort_ms, "rows": rows}


def setting(args) -> tuple[torch.nn.Module, torch.Tensor, str]:
    if args.l1_run:
        from runtime import trained_run

        return trained_run(args.l1_run, args.batch or 64)
    from actzip import models
    from runtime import MODELS, photos

    if args.masks:
        from actzip.sparsify.pixelmask import PixelMask, attach_pixel_masks

        name, sparsity = args.masks[0], float(args.masks[1])
        if name not in MODELS:
            raise SystemExit(f"--masks takes one of {', '.join(MODELS)}, not {name!r}")
        net = models.load(MODELS[name]).eval()
        x = torch.randn(args.batch or 8, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        attach_pixel_masks(net, PixelMask(sparsity, seed=0), x).update(1.0)  # as benchmarks/runtime.py does
        return net, x, f"{name} s={sparsity:g}"

    return models.load("efficientnet-lite0").eval(), photos(args.batch or 8), "efficientnet-lite0 photos"


def table(settings: list[dict]) -> str:
    parts = []
    for s in settings:
        lines = [f"## {s['model']}, batch {s['batch']}, {s['threads']} thread(s), {s['cpu']}\n",
                 f"Whole forward, timed with the hooks and the profiler on (the figures to quote are [runtime.md](runtime.md)'s): "
                 f"actzip {s['actzip_forward_ms']:.2f} ms, onnxruntime {s['onnxruntime_run_ms']:.2f} ms "
                 f"({s['onnxruntime_run_ms'] / s['actzip_forward_ms']:.2f}x).\n",
                 "| convs in one call | paths | zeros in their inputs | onnxruntime ms | actzip ms | speedup |",
                 "| --- | --- | --- | ---: | ---: | ---: |"]
        for r in s["rows"]:
            zeros = ", ".join("-" if z is None else f"{100 * z:.0f} %" for z in r["input_zeros"])
            lines.append(f"| {' + '.join(r['convs'])} | {', '.join(r['paths'])} | {zeros} | {r['onnxruntime_ms']:.3f} | "
                         f"{r['actzip_ms']:.3f} | {r['onnxruntime_ms'] / r['actzip_ms']:.2f}x |")
        ort, own = sum(r["onnxruntime_ms"] for r in s["rows"]), sum(r["actzip_ms"] for r in s["rows"])
        lines.append(f"| all convs | | | {ort:.3f} | {own:.3f} | {ort / own:.2f}x |")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--l1-run", type=Path, help="a finished run of benchmarks/sparsify_table.py")
    ap.add_argument("--photos", action="store_true", help="pretrained Lite0 on the bundled photos (the default)")
    ap.add_argument("--masks", nargs=2, metavar=("MODEL", "S"), help="a model of benchmarks/runtime.py with random "
                    "pixel masks at sparsity S")
    ap.add_argument("--batch", type=int, help="64 for an L1 run, else 8")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--out", type=Path, default=HERE / "runtime_layers.json")
    ap.add_argument("--table", action="store_true", help="only write the page from the JSON")
    args = ap.parse_args()
    if not args.table:
        torch.set_num_threads(args.threads)
        fresh = measure(*setting(args), args.rounds)
        key = lambda s: (s["cpu"], s["model"], s["batch"], s["threads"])  # noqa: E731
        old = json.loads(args.out.read_text()) if args.out.is_file() else []
        args.out.write_text(json.dumps([s for s in old if key(s) != key(fresh)] + [fresh], indent=1))
        print(table([fresh]))
    if args.out == HERE / "runtime_layers.json":
        from pages import write_page

        print("wrote", write_page("runtime_layers"))


if __name__ == "__main__":
    main()
