"""One re-quantization step per channel against one per site, on the same weights.

The Fashion-MNIST networks of benchmarks/sparsify_table.py, 8-bit activations compressed in the
loop (the variants of benchmarks/dctcm.py): per agreement target, dctcm G16 + ctxrans with its
per-site steps (no site takes the DCT at these targets) against one pixel-domain step per channel
(`channel_weights`), and the same with a fitted channel transform (klt) as a per-site choice
(`transform`), all calibrated on the first 2000 test images and evaluated on the other 8000.
Lite0's rows of the same comparison are in benchmarks/dctcm.json, whose Fashion-MNIST rows come
from earlier weights: this script runs the variants on whatever weights are there now.

    python benchmarks/channel_steps.py [--models resnet20 mobilenet-v1] [--targets 0.98 0.99]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

from actzip.fileio import atomic_write

HERE = Path(__file__).parent
spec = importlib.util.spec_from_file_location("dctcm_bench", HERE / "dctcm.py")
table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(table)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["resnet20", "mobilenet-v1"])
    ap.add_argument("--targets", nargs="+", type=float, default=[0.98, 0.99])
    ap.add_argument("--weights-dir", type=Path, default=Path("runs/sparsify_table"))
    ap.add_argument("--runs", type=Path, default=Path("runs/channel_steps"))
    ap.add_argument("--out", type=Path, default=HERE / "channel_steps.json")
    args = ap.parse_args()
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"models": {}}
    calibration = table.FMNIST_CALIBRATION
    for name in args.models:
        weights = args.weights_dir / f"{name}-baseline" / "weights.pt"
        if not weights.is_file():
            print(f"skipping {name}: no {weights} (train it with benchmarks/sparsify_table.py)")
            continue
        labels = [f"{kind} @agreement {t:g}" for t in args.targets
                  for kind in ("dctcm G16+ctxrans", "channel steps+ctxrans", "KLT or channel steps+ctxrans")]
        rows = table.run_model(name, weights, "fashion-mnist", 10000, args.runs / name, labels,
                               split=(range(calibration), range(calibration, 10000)))
        results["models"][name] = {"weights": str(weights), "rows": rows}
        for r in rows:
            print(f"{name:14} {r['run']:40} {r['compression']:.3f}x top-1 {100 * r['top1']['compressed']:.2f} % "
                  f"(float {100 * r['top1']['float']:.2f} %) agreement {100 * r['agreement']['compressed']:.2f} %")
    results["command"] = "python benchmarks/channel_steps.py --models " + " ".join(args.models) + \
        " --targets " + " ".join(f"{t:g}" for t in args.targets)
    atomic_write(args.out, json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
