"""Georgiadis 2019 stage 1 on Fashion-MNIST: baseline vs L1-sparsified fine-tuning.

For each model: train a baseline without penalty, then fine-tune it with the L1 activation penalty
at several strengths (same seed, same schedule). Per row: top-1 on the 10k test set, zero fraction
and effective (zero-skipping) MACs over `--eval-images` test images, the speedup of a zero-skipping
engine over the *baseline's* effective MACs, and the compression ratio of every codec at 8 and 16
bits. Runs live in --runs and are resumed if interrupted, so the script can be re-run to finish;
--reanalyze measures finished runs again from their weights (after a codec changes, say).

    python benchmarks/sparsify_table.py [--models resnet20 mobilenet-v1] [--base-epochs 15]
        [--tune-epochs 5] [--strengths 3e-3 1e-2 3e-2] [--l1-normalize mean|macs]
        [--distill 0.5] [--reanalyze]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from actzip import codecs
from actzip.fileio import atomic_write
from actzip.report import write_report
from actzip.train import TrainConfig, evaluate, train, trained_model
from pages import write_page

HERE = Path(__file__).parent


def run(config: TrainConfig, out: Path, reanalyze: bool = False) -> dict:
    if not (out / "report.json").is_file():
        return train(config, out, resume=(out / "checkpoint.pt").is_file())
    report = json.loads((out / "report.json").read_text())
    return measure_again(report, out) if reanalyze else report


def measure_again(report: dict, out: Path) -> dict:
    """The report of a finished run, measured again from its weights with the current code; its
    training record stays. The top-1 must come out as it did at the end of training."""
    model, config, sets = trained_model(out)
    top1, fresh = evaluate(model, sets.test, config)
    if abs(top1 - report["training"]["top1"]) > 1e-9:
        raise SystemExit(f"{out}: top-1 {top1} now, {report['training']['top1']} at the end of training")
    fresh["training"] = report["training"]
    write_report(fresh, out)
    return fresh


def row(label: str, report: dict, baseline_effective: float) -> dict:
    t = report["totals"]
    return {"run": label, "top1": report["training"]["top1"], "zero_fraction": t["zero_fraction"],
            "macs": t["macs"], "effective_macs": t["effective_macs"],
            "zero_skipping_speedup_vs_own_dense": t["theoretical_speedup"],
            "speedup_vs_baseline": baseline_effective / t["effective_macs"],
            "compression": t["compression"]}


def command(args: argparse.Namespace, model: str, strengths: list[float]) -> str:
    """The command line that reproduces one row (the baseline's: no strengths)."""
    settings = vars(args) | {"models": [model], "strengths": strengths}
    if not strengths:  # the fine-tuning settings do not touch the baseline
        settings = {k: settings[k] for k in ("models", "base_epochs", "strengths", "eval_images")}
    return "python benchmarks/sparsify_table.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}".rstrip()
        for k, v in settings.items() if k not in ("runs", "out", "reanalyze"))


def markdown(results: dict) -> str:
    lines = ["| model | run | top-1 % | zeros % | eff. MACs vs baseline | best 8-bit | best 16-bit |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for model, rows in results["models"].items():
        for r in rows:
            best = {b: max((c for c in r["compression"] if c != "entropy"), key=lambda c: r["compression"][c][b] or 0)
                    for b in ("8", "16")}
            lines.append(f"| {model} | {r['run']} | {100 * r['top1']:.2f} | {100 * r['zero_fraction']:.1f} | "
                         f"{r['speedup_vs_baseline']:.2f}x | {r['compression'][best['8']]['8']:.2f}x ({best['8']}) | "
                         f"{r['compression'][best['16']]['16']:.2f}x ({best['16']}) |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["resnet20", "mobilenet-v1"])
    ap.add_argument("--base-epochs", type=int, default=15)
    ap.add_argument("--tune-epochs", type=int, default=5)
    ap.add_argument("--strengths", nargs="*", type=float, default=[3e-3, 1e-2, 3e-2],
                    help="L1 strengths to fine-tune with (none: the baseline only)")
    ap.add_argument("--l1-normalize", default="mean", choices=["mean", "macs"],
                    help="macs: each site's penalty weighted by the MACs of the layer that reads it")
    ap.add_argument("--distill", type=float, default=0.0, help="weight of distillation from the baseline")
    ap.add_argument("--eval-images", type=int, default=1000)
    ap.add_argument("--reanalyze", action="store_true", help="measure finished runs again from their weights")
    ap.add_argument("--runs", type=Path, default=Path("runs/sparsify_table"))
    ap.add_argument("--out", type=Path, default=HERE / "sparsify_table.json")
    args = ap.parse_args()
    common = dict(dataset="fashion-mnist", seed=0, eval_images=args.eval_images, codecs=tuple(codecs.names()))
    # rows of other models and other settings stay, each with the command that reproduces it
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"models": {}}
    for model in args.models:
        base = run(TrainConfig(model=model, epochs=args.base_epochs, **common), args.runs / f"{model}-baseline",
                   args.reanalyze)
        rows = [row("baseline", base, base["totals"]["effective_macs"]) | {"command": command(args, model, [])}]
        # runs with MAC-weighted L1, distillation or longer than the default 5 epochs get their own
        # directory and label
        variant = [(args.l1_normalize == "macs", "-macs", " by MACs"),
                   (args.distill > 0, f"-kd{args.distill:g}", f" + KD {args.distill:g}"),
                   (args.tune_epochs != 5, f"-{args.tune_epochs}ep", f", {args.tune_epochs} ep")]
        run_suffix = "".join(r for on, r, _ in variant if on)
        label_suffix = "".join(label for on, _, label in variant if on)
        for alpha in args.strengths:
            tuned = run(TrainConfig(model=model, epochs=args.tune_epochs, l1=alpha, l1_normalize=args.l1_normalize,
                                    distill=args.distill, lr=0.005,
                                    init=str(args.runs / f"{model}-baseline" / "weights.pt"), **common),
                        args.runs / f"{model}-l1-{alpha:g}{run_suffix}", args.reanalyze)
            rows.append(row(f"L1 {alpha:g}{label_suffix}", tuned, base["totals"]["effective_macs"])
                        | {"command": command(args, model, [alpha])})
            print(json.dumps(rows[-1])[:300], flush=True)
        # rows of this model from other commands stay; those run now replace their namesakes
        kept = [r for r in results["models"].get(model, []) if r["run"] not in {x["run"] for x in rows}]
        results["models"][model] = sorted(kept + rows, key=lambda r: (r["run"] != "baseline", r["run"]))
        atomic_write(args.out, json.dumps(results, indent=1))
    if args.out == HERE / "sparsify_table.json":
        write_page("sparsify_table")
    print(markdown(results))


if __name__ == "__main__":
    main()
