"""actzip's compiled models against onnxruntime and PyTorch, end to end, in one process per setting.

Rows (each a call of `actzip.runtime.bench.benchmark_runtime`, engines timed in turns, median):
- semi-structured: torchvision ResNet18 and MobileNetV2 (random weights: latency does not depend on
  them) and pretrained EfficientNet-Lite0 at 224x224 with random pixel masks at each sparsity; s = 0
  is the model compiled with no masks, the "masks open" row;
- unstructured: pretrained Lite0 on the bundled photos, no masks: only the zeros its ReLU6 leaves;
- L1-sparsified (`--l1-runs DIR...`): trained runs of benchmarks/sparsify_table.py (a folder with
  report.json and weights.pt each) on their dataset's first test images at their trained input size,
  batch 64 (`--l1-batch`), the zeros their activation penalty left.
Each at batch 1 and 8 and at each thread count. The JSON keeps every engine's time and the CPU
(`machine.cpu`); the page gives, per CPU, the compiled model's speedup over onnxruntime.

    python benchmarks/runtime.py [--threads 1 2] [--batches 1 8] [--sparsities 0 0.2 0.3 0.5]
    python benchmarks/runtime.py --sparsities   # no semi-structured rows: only the unstructured ones
    python benchmarks/runtime.py --l1-runs runs/sparsify_table/mobilenet-v1-l1-0.3-kd0.5-30ep --threads 1 2
    python benchmarks/runtime.py --table   # docs/results/runtime.md from the JSON
A run replaces the JSON's rows it measured again (same CPU, kind, model, batch, threads and s) and keeps the rest.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch
from machine import EARLIER, cpu

HERE = Path(__file__).parent
MODELS = {"resnet18": "torchvision/resnet18", "mobilenetv2": "torchvision/mobilenet_v2",
          "efficientnet-lite0": "efficientnet-lite0"}


def photos(batch: int) -> torch.Tensor:
    from actzip import models
    from actzip.data import open_images

    views = open_images("photos", models.preprocessing("efficientnet-lite0"))
    return torch.stack([views[i % len(views)][0] for i in range(batch)])


def one(net, example: torch.Tensor, sparsity: float, rounds: int) -> dict:
    from actzip.runtime.bench import benchmark_runtime

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = benchmark_runtime(net, example, sparsity, rounds=rounds)
    layers = r["compile"]["layers"]
    r["paths"] = {p: sum(c["path"] == p for c in layers) for p in ("dense", "sparse", "zeros", "zeros-pixel", "kernel",
                                                             "kernel-zeros", "zeros-taps", "zeros-3x3",
                                                             "onnxruntime")}
    del r["compile"]["layers"]
    return r


def trained_run(folder: Path, batch: int):
    """(model, its first `batch` test images, label) of a finished run of benchmarks/sparsify_table.py."""
    from actzip.train import trained_model

    model, config, sets = trained_model(folder)
    x = torch.stack([sets.test[i][0] for i in range(batch)])
    return model.eval(), x, f"{config.model} {folder.name}"


def measure_l1_runs(args) -> list[dict]:
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for folder in args.l1_runs:
            model, x, label = trained_run(folder, args.l1_batch)
            rows.append({"cpu": cpu(), "kind": "L1-sparsified", "model": label, "batch": args.l1_batch,
                         "threads": threads, **one(model, x, 0.0, args.rounds)})
            print(summary(rows[-1]), flush=True)
    return rows


def measure(args) -> list[dict]:
    from actzip import models

    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for short in args.models:
            net = models.load(MODELS[short]).eval()
            for batch in args.batches:
                example = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
                for s in args.sparsities:
                    rows.append({"cpu": cpu(), "kind": "semi-structured", "model": short, "batch": batch,
                                 "threads": threads, **one(net, example, s, args.rounds)})
                    print(summary(rows[-1]), flush=True)
        lite0 = models.load("efficientnet-lite0").eval()
        for batch in args.batches:
            rows.append({"cpu": cpu(), "kind": "unstructured (photos)", "model": "efficientnet-lite0", "batch": batch,
                         "threads": threads, **one(lite0, photos(batch), 0.0, args.rounds)})
            print(summary(rows[-1]), flush=True)
    return rows


def merged(out: Path, fresh: list[dict]) -> list[dict]:
    """The rows of the JSON `out`, each replaced in place by its `fresh` measurement if there is
    one, then the fresh rows of settings it did not have."""
    def key(r):
        return r.get("cpu", EARLIER), r["kind"], r["model"], r["batch"], r["threads"], r["sparsity"]

    new = {key(r): r for r in fresh}
    old = json.loads(out.read_text()) if out.is_file() else []
    rows = [new.pop(key(r), r) for r in old]
    return rows + list(new.values())


def summary(r: dict) -> str:
    return (f"{r['kind']:<22} {r['model']:<19} b{r['batch']} t{r['threads']} s={r['sparsity']:.2f}: "
            f"{r['speedup_over'].get('onnxruntime', float('nan')):.2f}x onnxruntime ({r.get('engine')}), "
            f"graph {r.get('actzip_graph_speedup', float('nan')):.2f}x {r['baseline']}; paths {r['paths']}")


def table(rows: list[dict]) -> str:
    """One table per CPU, in the order the JSON first names them."""
    parts = []
    for name in dict.fromkeys(r.get("cpu", EARLIER) for r in rows):
        parts.append(f"## {name}\n\n" + cpu_table([r for r in rows if r.get("cpu", EARLIER) == name]))
    return "\n".join(parts)


def kernel_convs(paths: dict) -> str:
    """The convs on actzip's kernels with every pixel kept, and how many of them skip zeros."""
    skipping = paths.get("kernel-zeros", 0)
    return f"{paths.get('kernel', 0) + skipping}" + (f" ({skipping} skipping zeros)" if skipping else "")


def cpu_table(rows: list[dict]) -> str:
    lines = ["| kind | model | batch | threads | s | onnxruntime ms | actzip graph ms | graph vs onnxruntime | "
             "compiled: engine, vs onnxruntime | convs sparse / zeros / kernel / in onnxruntime's prefix |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for r in rows:
        ms = r["ms"]
        ort = ms.get("onnxruntime", float("nan"))
        graph = ms.get("actzip_graph", ms["compiled"])
        lines.append(f"| {r['kind']} | {r['model']} | {r['batch']} | {r['threads']} | {r['sparsity']:.2f} | "
                     f"{ort:.1f} | {graph:.1f} | {ort / graph:.2f}x | {r.get('engine', 'actzip')}, "
                     f"{r['speedup_over'].get('onnxruntime', float('nan')):.2f}x | "
                     f"{r['paths']['sparse']} / {r['paths']['zeros'] + r['paths'].get('zeros-pixel', 0)} / "
                     f"{kernel_convs(r['paths'])} / {r['paths'].get('onnxruntime', 0)} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--sparsities", nargs="*", type=float, default=[0.0, 0.2, 0.3, 0.5])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=HERE / "runtime.json")
    ap.add_argument("--l1-runs", nargs="+", type=Path, default=[],
                    help="time these trained runs instead (rows of the same kind and model in the JSON are replaced)")
    ap.add_argument("--l1-batch", type=int, default=64)
    ap.add_argument("--table", action="store_true", help="only write docs/results/runtime.md from the JSON")
    args = ap.parse_args()
    if not args.table:
        fresh = measure_l1_runs(args) if args.l1_runs else measure(args)
        args.out.write_text(json.dumps(merged(args.out, fresh), indent=1))
    if args.out == HERE / "runtime.json":
        from pages import write_page

        print("wrote", write_page("runtime"))


if __name__ == "__main__":
    main()
