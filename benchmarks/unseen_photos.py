"""EfficientNet-Lite0 on photos its calibration did not see, over a sweep of output budgets; and
the Fashion-MNIST networks at the same settings, on test images their calibration did not see.

The 27 bundled photos in 8 views each (reframed, mirrored) are cut in two folds by photo (even
and odd numbered, `dctcm.photo_split`). Each fold is calibrated on once (quantizers,
sensitivities, channel weights, fitted channel transforms: `actzip.lossy.planner`) and the
other fold's views are evaluated at every output budget, 8-bit, in the loop. Two variants: one
pixel-domain step per channel (`channel_weights`), and the same with a fitted channel transform
(klt) as a per-site choice (`transform`). Each fold measures about 104 views of 13 photos: one
view is ~1 pt of agreement, and the views of one photo tend to flip together, so the two folds
are pooled as well.

Why a sweep as well as an agreement target: on 112 views one flip is ~1 pt, and 8-bit
quantization alone already flips one or two of them, so counting flips on the calibration views
lets the search (`actzip.lossy.budgets.budget_for_agreement`) settle on whichever budget's noise
happens to miss their near-ties. The search is run both ways: counting flips, and with the
agreement expected from each view's logit margin and output noise (`lossy.agreement.agreement_chance`),
which is smooth in the budget. Every row also reports the expected agreement on the evaluated
views next to the counted one, and "near_ties" says how fragile each fold's views are from the
float logits alone.

The Fashion-MNIST networks (benchmarks/sparsify_table.py baselines) are calibrated on the first
2000 test images and evaluated on the other 8000, as in benchmarks/dctcm.py (`--fmnist`).

    python benchmarks/unseen_photos.py [--budgets 0.003 ... 0.03] [--agreement 0.98] [--folds A B] [--variants ...]
    python benchmarks/unseen_photos.py --fmnist resnet20 mobilenet-v1 [--budgets ...]

Writes benchmarks/unseen_photos.json; each (fold, variant, setting) is cached in runs/unseen_photos.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from actzip import models
from actzip.data import bundled_photos, open_images
from actzip.data.images import VIEW_SCALES
from actzip.fileio import atomic_write
from actzip.lossy.agreement import chance_from_margins, margin_noise
from actzip.lossy.config import EvaluateConfig
from actzip.lossy.evaluate import evaluate
from actzip.lossy.planner import planner
from dctcm import FMNIST_CALIBRATION, photo_split, summary

HERE = Path(__file__).parent
MODEL = "efficientnet-lite0"
VARIANTS = {"channel steps+ctxrans": {}, "KLT or channel steps+ctxrans": {"transform": True}}
ESTIMATES = ("count", "margin")  # how the agreement search measures agreement on the calibration views


def folds() -> dict[str, tuple[list[int], list[int]]]:
    """fold -> (calibration indices, evaluated indices) into photo-views: A calibrates on the even photos."""
    even, odd = photo_split(len(bundled_photos()), 2 * len(VIEW_SCALES))
    return {"A": (even, odd), "B": (odd, even)}


def near_ties(model, data, errors=(0.001, 0.005, 0.01, 0.02)) -> dict:
    """How fragile the views are, from the float logits alone: per fold of evaluated views, the
    views whose top-2 margin is under 10 % of their logits' RMS, and the flips expected from
    noise spread alike over the logits (kappa 1) at each relative output error e."""
    with torch.no_grad():
        logits = torch.cat([model(x) for x, _ in DataLoader(data, batch_size=16)]).double().numpy()
    margin = margin_noise(logits, logits)[0]
    power = np.square(logits).mean(axis=1)  # relative output error e: noise of power e * this per logit
    out = {}
    for fold, (_, evaluated) in folds().items():
        m, p = margin[evaluated], power[evaluated]
        relative = m / np.sqrt(p)
        out[fold] = {"views": len(evaluated),
                     "margins_under_0.1_rms": sorted(float(r) for r in relative[relative < 0.1]),
                     # kappa 1: the noise on a margin twice the power per logit
                     "expected_flips_kappa_1": {f"{e:g}": float((1 - chance_from_margins(np.stack([m, e * p, 2 * e * p]))).sum())
                                                for e in errors}}
    return out


def pooled(rows: list[dict]) -> dict:
    """Agreement and compression over the folds' evaluated views together (bytes add up, views add up)."""
    images = sum(r["images"] for r in rows)
    agree = sum(r["agreement"]["compressed"] * r["images"] for r in rows)
    expected = sum(r["expected_agreement"]["compressed"] * r["images"] for r in rows)
    # compression: total values over total bytes; each row's ratio is values / bytes of its views
    values = sum(sum(s["numel"] for s in r["sites"]) for r in rows)
    coded = sum(sum(s["numel"] / s["compression"] for s in r["sites"]) for r in rows)
    return {"images": images, "agreement": agree / images, "expected_agreement": expected / images,
            "compression": values / coded}


def sweep(model, calibration, evaluated, name: str, variants: list[str], budgets: list[float],
          targets: list[float], runs: Path, batch_size: int, results: dict) -> None:
    """Per variant: one planner on `calibration`, then every output budget, and the budget the
    agreement search finds on `calibration` for every target (counting flips, and from the
    margins), evaluated on `evaluated`; each row cached in `runs` and kept in results["rows"]
    under "<name> <variant> @output <budget>" or "... @agreement <target> (<estimate>)"."""
    for variant in variants:
        # the output budget only makes the config valid for channel weights: the planner takes any
        config = EvaluateConfig(codec="dctcm", bits=8, output_budget=budgets[0] if budgets else 0.01,
                                channel_weights=True, codec_params={"coder": "ctxrans", "transform": False},
                                calibration_images=len(calibration), batch_size=batch_size, **VARIANTS[variant])
        plans = None
        settings = [(f"@output {b:g}", b, None) for b in budgets]
        settings += [(f"@agreement {t:g} ({estimate})", None, (t, estimate)) for t in targets for estimate in ESTIMATES]
        for label, budget, target in settings:
            key = f"{name} {variant} {label}"
            path = runs / (key.replace(" ", "_").replace("@", "").replace("+", "-").replace("(", "").replace(")", "")
                           + ".json")
            if path.is_file():
                results["rows"][key] = json.loads(path.read_text())
                continue
            t = time.perf_counter()
            if plans is None:
                plans = planner(model, calibration, config)
                print(f"{name} {variant}: calibrated in {time.perf_counter() - t:.0f} s", flush=True)
            search = {}
            if target is None:
                coders = plans(budget)
            else:
                budget, coders, reached = plans.for_agreement(*target)
                search = {"output_budget": budget, "calibration_agreement": reached, "estimate": target[1]}
            report = evaluate(model, evaluated, config, calibration=calibration, coders=coders)
            row = summary(key, report) | {"variant": variant, "output_budget": budget, "agreement_search": search,
                                          "side_bytes": report["side_bytes"], "seconds": time.perf_counter() - t}
            for s, full in zip(row["sites"], report["sites"]):
                s["numel"] = full["numel"]
            atomic_write(path, json.dumps(row, indent=1))
            results["rows"][key] = row
            top1 = report["top1"]
            print(f"{key:60} {row['compression']:.3f}x agreement {100 * row['agreement']['compressed']:.1f} % "
                  f"(expected {100 * row['expected_agreement']['compressed']:.1f} %) output budget {budget:.3g} "
                  f"error {row['output_error']['compressed']:.4f}"
                  + (f" top-1 {100 * top1['compressed']:.2f} % (float {100 * top1['float']:.2f} %)"
                     if top1["compressed"] is not None else ""), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budgets", nargs="*", type=float, default=[0.003, 0.005, 0.01, 0.02, 0.03])
    ap.add_argument("--agreement", nargs="*", type=float, default=[0.98],
                    help="agreement targets for the search on the calibration images (both estimates)")
    ap.add_argument("--folds", nargs="+", default=["A", "B"], choices=["A", "B"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--fmnist", nargs="+", default=[], choices=["resnet20", "mobilenet-v1"],
                    help="sweep these Fashion-MNIST networks instead of Lite0")
    ap.add_argument("--weights-dir", type=Path, default=Path("runs/sparsify_table"))
    ap.add_argument("--runs", type=Path, default=Path("runs/unseen_photos"))
    ap.add_argument("--out", type=Path, default=HERE / "unseen_photos.json")
    args = ap.parse_args()
    args.runs.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"rows": {}}
    for name in args.fmnist:
        weights = args.weights_dir / f"{name}-baseline" / "weights.pt"
        if not weights.is_file():
            print(f"skipping {name}: no {weights} (train it with benchmarks/sparsify_table.py)")
            continue
        data = open_images("fashion-mnist", models.preprocessing(name))
        sweep(models.load(name, weights=weights), Subset(data, range(FMNIST_CALIBRATION)),
              Subset(data, range(FMNIST_CALIBRATION, 10000)), name, args.variants, args.budgets, args.agreement, args.runs,
              200, results)
    if not args.fmnist:
        model = models.load(MODEL)
        data = open_images("photo-views", models.preprocessing(MODEL))
        results["near_ties"] = near_ties(model, data)
        for fold in args.folds:
            calibration, evaluated = (Subset(data, indices) for indices in folds()[fold])
            sweep(model, calibration, evaluated, fold, args.variants, args.budgets, args.agreement, args.runs, 16,
                  results)
    results["pooled"] = {key[2:]: pooled([row, results["rows"]["B " + key[2:]]])
                         for key, row in results["rows"].items() if key.startswith("A ") and "B " + key[2:] in results["rows"]}
    command = " ".join(["python", "benchmarks/unseen_photos.py"] + [shlex.quote(a) for a in sys.argv[1:]])
    results["commands"] = sorted(set(results.get("commands", [])) | {command})
    atomic_write(args.out, json.dumps(results, indent=1))
    print(json.dumps(results["pooled"], indent=1))


if __name__ == "__main__":
    main()
