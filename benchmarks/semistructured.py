"""Grimaldi 2023 on this machine: what pixel masks cost in accuracy and buy in wall-clock time.

accuracy: `resnet20` / `mobilenet-v1` on Fashion-MNIST. A dense baseline (trained from scratch, the
one of benchmarks/sparsify_table.py when it exists), then fine-tuned from it with pixel masks at each
sparsity, random (published) vs magnitude, spread and taylor (ours) masks (`--criteria`), with one
or more fine-tune seeds (`--seeds`), plus a dense fine-tune with the same schedule as the fair
reference. Top-1 on the 10k test set. Runs live in --runs and are resumed.

speed: end-to-end latency of torchvision ResNet18 / MobileNetV2 and EfficientNet-Lite0 at 224x224,
2 threads, `actzip.runtime.compile` vs dense PyTorch (channels_last and contiguous; the faster one
is the baseline), in the same process, median of repeated runs. Random masks at each sparsity
(latency does not depend on which pixels are masked, only on how many).

    python benchmarks/semistructured.py accuracy [--models resnet20 mobilenet-v1] [--sparsities 0.2 ...]
    python benchmarks/semistructured.py speed [--models resnet18 mobilenetv2 efficientnet-lite0]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from actzip.train import TrainConfig, train
from pages import write_page

HERE = Path(__file__).parent
TABLE_RUNS = Path("runs/sparsify_table")  # baselines shared with the L1 table


def run(config: TrainConfig, out: Path) -> dict:
    if (out / "report.json").is_file():
        return json.loads((out / "report.json").read_text())
    return train(config, out, resume=(out / "checkpoint.pt").is_file())


def accuracy(args) -> dict:
    common = dict(dataset="fashion-mnist", eval_images=200, codecs=("zvc",), bits=(8,))
    results = {}
    for model in args.models:
        base_dir = TABLE_RUNS / f"{model}-baseline"
        if not (base_dir / "report.json").is_file():
            base_dir = args.runs / f"{model}-baseline"
        base = run(TrainConfig(model=model, epochs=args.base_epochs, seed=0, **common), base_dir)
        tune = dict(epochs=args.tune_epochs, lr=args.lr, init=str(base_dir / "weights.pt"), **common)
        rows = [{"run": "baseline", "sparsity": 0.0, "seed": 0, "top1": base["training"]["top1"]}]
        dense = run(TrainConfig(model=model, seed=0, **tune), args.runs / f"{model}-dense-ft")
        rows.append({"run": "dense fine-tuned", "sparsity": 0.0, "seed": 0, "top1": dense["training"]["top1"]})
        for seed in args.seeds:
            for s in args.sparsities:
                for criterion in args.criteria:
                    suffix = f"-seed{seed}" if seed else ""  # seed 0 keeps the directories of earlier runs
                    r = run(TrainConfig(model=model, pixel_sparsity=s, pixel_criterion=criterion, seed=seed, **tune),
                            args.runs / f"{model}-{criterion}-{s:g}{suffix}")
                    rows.append({"run": criterion, "sparsity": s, "seed": seed, "top1": r["training"]["top1"]})
                    print(model, rows[-1], flush=True)
        results[model] = rows
    return results


def merge_rows(saved: list[dict], new: list[dict]) -> list[dict]:
    """saved rows with each (run, sparsity, seed) that `new` measured replaced by the new row."""
    def key(row):
        return row["run"], row["sparsity"], row.get("seed", 0)
    fresh = {key(r): r for r in new}
    return [r for r in saved if key(r) not in fresh] + new


CRITERIA_COLUMNS = ("random", "magnitude", "spread", "taylor")


def accuracy_markdown(results: dict) -> str:
    """Top-1 per criterion: the mean over seeds, with their range and count when there are several."""
    lines = ["| model | s | " + " | ".join(f"{c} top-1 %" for c in CRITERIA_COLUMNS) + " | dense fine-tuned % |",
             "| --- | ---: | " + "---: | " * len(CRITERIA_COLUMNS) + "---: |"]

    def cell(values: list[float]) -> str:
        if not values:
            return "-"
        mean = 100 * sum(values) / len(values)
        if len(values) == 1:
            return f"{mean:.2f}"
        return f"{mean:.2f} ({100 * min(values):.2f}-{100 * max(values):.2f}, {len(values)} seeds)"

    for model, rows in results.items():
        dense = next(r["top1"] for r in rows if r["run"] == "dense fine-tuned")
        for s in sorted({r["sparsity"] for r in rows if r["sparsity"]}):
            cells = " | ".join(cell([r["top1"] for r in rows if r["sparsity"] == s and r["run"] == c])
                               for c in CRITERIA_COLUMNS)
            lines.append(f"| {model} | {s:g} | {cells} | {100 * dense:.2f} |")
    return "\n".join(lines) + "\n"


SPEED_MODELS = {"resnet18": "torchvision/resnet18", "mobilenetv2": "torchvision/mobilenet_v2",
                "efficientnet-lite0": "efficientnet-lite0"}


def speed(args) -> list[dict]:
    import warnings

    from actzip import models
    from actzip.runtime.bench import benchmark_runtime

    rows = []
    for short in args.models:
        net = models.load(SPEED_MODELS[short])
        for batch in args.batches:
            example = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
            for s in args.sparsities:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    r = benchmark_runtime(net, example, s, rounds=args.rounds)
                row = {"model": short, "batch": batch, "sparsity": s, **{k: v for k, v in r.items() if k != "compile"},
                       "sparse_convs": r["compile"]["sparse_convs"], "convs": r["compile"]["convs"]}
                rows.append(row)
                print(json.dumps({k: row[k] for k in ("model", "batch", "sparsity", "ms", "speedup",
                                                       "speedup_of_sparsity", "sparse_convs")}), flush=True)
    return rows


def speed_markdown(rows: list[dict]) -> str:
    lines = ["| model | batch | s | dense ms (best of cl/contig) | compiled ms | speedup | of it: folding | "
             "of it: sparsity | ideal (convs) | sparse convs |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
             "| ---: | ---: |"]
    for r in rows:
        base = min(r["ms"]["dense_channels_last"], r["ms"]["dense_contiguous"])
        lines.append(f"| {r['model']} | {r['batch']} | {r['sparsity']:.2f} | {base:.1f} | {r['ms']['compiled']:.1f} | "
                     f"{r['speedup']:.2f}x | {r['speedup_of_folding']:.2f}x | {r['speedup_of_sparsity']:.2f}x | "
                     f"{r['ideal_conv_speedup']:.2f}x | {r['sparse_convs']}/{r['convs']} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    acc = sub.add_parser("accuracy")
    acc.add_argument("--models", nargs="+", default=["resnet20", "mobilenet-v1"])
    acc.add_argument("--sparsities", nargs="+", type=float, default=[0.2, 0.1, 0.3, 0.5])
    acc.add_argument("--base-epochs", type=int, default=15)
    acc.add_argument("--tune-epochs", type=int, default=5)
    acc.add_argument("--lr", type=float, default=0.01)
    acc.add_argument("--criteria", nargs="+", default=list(CRITERIA_COLUMNS))
    acc.add_argument("--seeds", nargs="+", type=int, default=[0], help="fine-tune seeds (masks and batches)")
    acc.add_argument("--runs", type=Path, default=Path("runs/semistructured"))
    sp = sub.add_parser("speed")
    sp.add_argument("--models", nargs="+", default=list(SPEED_MODELS), choices=list(SPEED_MODELS))
    sp.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    sp.add_argument("--sparsities", nargs="+", type=float, default=[0.1, 0.2, 0.3, 0.5])
    sp.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(2)
    command = "python benchmarks/semistructured.py " + " ".join(sys.argv[1:])
    if args.what == "accuracy":
        # rows measured before stay (a row is replaced only when re-measured), with the commands behind them
        path = HERE / "semistructured_accuracy.json"
        saved = json.loads(path.read_text()) if path.is_file() else {"models": {}}
        commands = saved.get("commands", {})
        results = dict(saved["models"])
        for model, rows in accuracy(args).items():
            results[model] = merge_rows(results.get(model, []), rows)
            commands.setdefault(model, [])
            if command not in commands[model]:
                commands[model].append(command)
        path.write_text(json.dumps({"commands": commands, "models": results}, indent=1))
        write_page("semistructured_accuracy")
        print(accuracy_markdown(results))
    else:
        rows = speed(args)
        (HERE / "semistructured_speed.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))
        write_page("semistructured_speed")
        print(speed_markdown(rows))


if __name__ == "__main__":
    main()
