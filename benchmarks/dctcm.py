"""DCT-CM (Shi et al. 2021) against the lossless codecs, with compressed activations in the loop.

Per model, 8-bit activation maps, every site compressed and decoded inside the forward pass:
- lossless: zvc, seg, ctx and ctxrans (the best lossless codecs here) give the quantization-only
  accuracy;
- dctcm at three per-site error budgets (relative squared error), built up in steps so the gain
  can be attributed: re-quantization alone in the pixel domain (transform off) with zvc bitmap
  coding, then the channel DCT allowed (G = 8 and 16), then rans, then ctxrans (rANS with the
  spatial neighbours as context) instead of zvc for the streams;
- dctcm G16+ctxrans at the per-site budget 1e-3 spread by sensitivity (`budget_by_sensitivity`:
  the output error that 1e-3 at every site would cause, spent where it saves the most bits);
- dctcm with one budget on the model's output (relative squared error of the logits) split among
  the sites by their measured sensitivity (`actzip.lossy.budgets`), at three output budgets, and at the
  middle one the same attribution steps; and for Lite0 a few of these on 8 views of every photo
  (reframed and mirrored, `photo-views`), calibrated on the plain photos, where one flip is 0.5 %
  rather than 3.7 % of the agreement;
- dctcm with a top-1 agreement target on the calibration images (`agreement`), for which the output
  budget is searched: one setting that means the same on every model. The Fashion-MNIST models
  calibrate it (and their quantizers) on the first 2000 test images and are evaluated on the other
  8000 (training images will not do: the networks fit them, so an agreement kept there is lost on
  unseen images); Lite0 has only its 27 photos: calibrated on them, its 8 views of each are the
  check on unseen framings, and calibrated on the views of 14 photos, the views of the other 13
  are the check on unseen photos;
- the output budgets and agreement targets again with one pixel-domain step per channel
  (`channel_weights`), the error spread over a site's channels by how strongly each reaches the
  output.
Models: EfficientNet-Lite0 on the bundled photos (top-1 agreement with the float model), and
resnet20 / mobilenet-v1 trained on Fashion-MNIST by benchmarks/sparsify_table.py (top-1 on the
test set). Speed: dctcm encode/decode MB/s of the 8-bit codes of Lite0 (per-site settings at the
middle budget) beside zstd -3, in the same process, median of repeats.

Results are cached per configuration in --runs, so an interrupted run resumes.

    python benchmarks/dctcm.py [--models efficientnet-lite0 resnet20 mobilenet-v1] [--fmnist-images 10000]
        [--select "dctcm G16+ctxrans"]  (only the variants whose label starts so)
    python benchmarks/dctcm.py --speed-only  (the speed again, every model's rows kept)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import zstandard
from torch.utils.data import Subset

from actzip import codecs, models
from actzip.codecs import klt
from actzip.codecs.search import choose
from actzip.codecs.transform import STEPS_PER_OCTAVE, step_index
from actzip.data import bundled_photos, open_images
from actzip.data.images import VIEW_SCALES
from actzip.fileio import atomic_write
from actzip.lossy.config import EvaluateConfig
from actzip.lossy.evaluate import evaluate
from lite0_maps import lite0_streams
from pages import write_page

HERE = Path(__file__).parent
BUDGETS = (1e-4, 1e-3, 1e-2)
OUTPUT_BUDGETS = (0.03, 0.1, 0.3)
AGREEMENTS = (0.97, 0.98, 0.99)
FMNIST_CALIBRATION = 2000  # test images the agreement targets are calibrated on (and not evaluated on)
# on Lite0's 8 views of each photo (calibrated on the plain photos only): agreement with a finer grain
VIEW_VARIANTS = ["ctxrans", "dctcm G16+ctxrans @0.001", "dctcm G16+ctxrans @output", "dctcm G16+ctxrans @agreement",
                 "channel steps+ctxrans"]
LOSSLESS = ("zvc", "seg", "ctx", "ctxrans")
CODERS = ("zvc", "rans", "ctxrans")  # dctcm's inner coders, in the order the gains build up
PHOTOS, SPEED_GROUP = 27, 4  # the speed test's photos, and how many go into one stream


def variants() -> list[tuple[str, dict]]:
    """(label, EvaluateConfig settings) in the order the gains build up."""
    out = [(name, {"codec": name}) for name in LOSSLESS]
    for b in BUDGETS:
        for coder in CODERS:
            out += [(f"requantize+{coder} @{b:g}",
                     {"codec": "dctcm", "codec_params": {"budget": b, "transform": False, "coder": coder}}),
                    (f"dctcm G8+{coder} @{b:g}", {"codec": "dctcm", "codec_params": {"budget": b, "group": 8, "coder": coder}}),
                    (f"dctcm G16+{coder} @{b:g}", {"codec": "dctcm", "codec_params": {"budget": b, "group": 16, "coder": coder}})]
    out.append(("dctcm G16+ctxrans @0.001 by sensitivity",
                {"codec": "dctcm", "budget_by_sensitivity": True,
                 "codec_params": {"budget": 1e-3, "group": 16, "coder": "ctxrans"}}))
    for b in OUTPUT_BUDGETS:
        steps = [("requantize", "zvc", False), ("dctcm G16", "zvc", True), ("dctcm G16", "rans", True),
                 ("requantize", "ctxrans", False)] if b == OUTPUT_BUDGETS[1] else []
        for name, coder, transform in steps + [("dctcm G16", "ctxrans", True)]:
            out.append((f"{name}+{coder} @output {b:g}",
                        {"codec": "dctcm", "output_budget": b,
                         "codec_params": {"group": 16, "coder": coder, "transform": transform}}))
    for a in AGREEMENTS:
        out.append((f"dctcm G16+ctxrans @agreement {a:g}",
                    {"codec": "dctcm", "agreement": a, "codec_params": {"group": 16, "coder": "ctxrans"}}))
    # one step per channel, weighted by how strongly each channel reaches the output (actzip.lossy.importance)
    for b in OUTPUT_BUDGETS:
        out.append((f"channel steps+ctxrans @output {b:g}",
                    {"codec": "dctcm", "output_budget": b, "channel_weights": True,
                     "codec_params": {"coder": "ctxrans", "transform": False}}))
    for a in AGREEMENTS:
        out.append((f"channel steps+ctxrans @agreement {a:g}",
                    {"codec": "dctcm", "agreement": a, "channel_weights": True,
                     "codec_params": {"coder": "ctxrans", "transform": False}}))
    # or, per conv site, a channel transform fitted to it (the klt codec) where that costs less
    for a in AGREEMENTS:
        out.append((f"KLT or channel steps+ctxrans @agreement {a:g}",
                    {"codec": "dctcm", "agreement": a, "channel_weights": True, "transform": True,
                     "codec_params": {"coder": "ctxrans", "transform": False}}))
    return out


def photo_split(photos: int, views: int) -> tuple[list[int], list[int]]:
    """Indices into `photo-views` (all photos in one framing, then the next framing): every view of
    the even-numbered photos to calibrate on, every view of the odd-numbered ones to evaluate on."""
    def every_view(first: int) -> list[int]:
        return [v * photos + i for v in range(views) for i in range(first, photos, 2)]
    return every_view(0), every_view(1)


def site_codec(config: dict) -> dict:
    """A site's codec settings for the JSON: a list of channel steps shrinks to its range and median
    (a Lite0 row would otherwise carry some 20 000 of them)."""
    steps = config.get("channel_steps")
    if not isinstance(steps, list):
        return config
    return config | {"channel_steps": {"channels": len(steps), "min": min(steps), "median": statistics.median(steps),
                                       "max": max(steps)}}


def summary(label: str, report: dict) -> dict:
    sites = report["sites"]
    return {"run": label, "codec": report["codec"], "params": report["codec_params"],
            "compression": report["compression"], "top1": report["top1"], "agreement": report["agreement"],
            "expected_agreement": report["expected_agreement"], "margin_kappa": report["margin_kappa"],
            "images": report["images"], "output_error": report["output_error"],
            "agreement_search": report["agreement_search"],
            "dct_sites": sum(bool(s["codec"].get("transform")) and s["codec"]["id"] == "dctcm" for s in sites),
            "sites": [{k: s[k] for k in ("name", "compression", "relative_error", "budget", "sensitivity") if k in s}
                      | {"codec": site_codec(s["codec"])}
                      for s in sites]}


def run_model(model_name: str, weights: Path | None, images: str, limit: int | None, cache: Path,
              select: list[str] | None, calibration_images: int = 64,
              split: tuple[Sequence[int], Sequence[int]] | None = None, only: list[str] | None = None) -> list[dict]:
    """Every variant on the model whose label starts with one of `select` and one of `only` (each
    None: any); with split = (calibration indices, evaluated indices), the agreement targets are
    calibrated on the first and evaluated on the second."""
    model = models.load(model_name, weights=weights)
    data = open_images(images, models.preprocessing(model_name))
    cache.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, settings in variants():
        if any(prefixes and not any(label.startswith(p) for p in prefixes) for prefixes in (select, only)):
            continue
        path = cache / f"{model_name}-{label.replace(' ', '_').replace('@', '').replace('+', '-')}.json"
        if path.is_file():
            rows.append(json.loads(path.read_text()))
            continue
        t = time.perf_counter()
        evaluated, calibration, count, size = data, None, calibration_images, limit
        if "agreement" in settings and split:
            calibration, evaluated = (Subset(data, indices) for indices in split)
            count, size = len(calibration), None
        report = evaluate(model, evaluated, EvaluateConfig(bits=8, limit=size, **settings, calibration_images=count,
                                                           batch_size=200 if images.startswith("fashion") else 16),
                          calibration=calibration)
        rows.append(summary(label, report) | {"seconds": time.perf_counter() - t})
        atomic_write(path, json.dumps(rows[-1], indent=1))
        r = rows[-1]
        print(f"{model_name:18} {label:26} {r['compression']:.3f}x top1 {r['top1']['compressed']} "
              f"agree {r['agreement']['compressed']:.4f} dct sites {r['dct_sites']}", flush=True)
    return rows


def speed(repeats: int) -> dict:
    """dctcm encode/decode MB/s on Lite0's 8-bit maps (one stream per site and 4 photos) vs zstd -3."""
    streams = lite0_streams(PHOTOS, 8, SPEED_GROUP)
    raw = sum(a.nbytes for a in streams)
    out = {}
    zstd = zstandard.ZstdCompressor(level=3)
    zstd_d = zstandard.ZstdDecompressor()
    variants = {coder: [codecs.get("dctcm", bits=8, coder=coder, **choose(a, 8, BUDGETS[1], coder=coder))
                        for a in streams] for coder in CODERS}
    # one step per channel: a plan's steps need the model, so here each channel's step lies within an
    # octave of the stream's own pixel-domain step (the same kernels and coder, codes of mixed scales)
    rng = np.random.default_rng(0)
    variants["ctxrans, channel steps"] = []
    for a in streams:
        k = step_index(choose(a, 8, BUDGETS[1], coder="ctxrans", transform=False)["step"])
        octave = STEPS_PER_OCTAVE
        indices = np.clip(k + rng.integers(-octave, octave + 1, a.shape[1]), 0, octave * 7)  # steps 1..128
        variants["ctxrans, channel steps"].append(codecs.get("dctcm", bits=8, coder="ctxrans", transform=False,
                                                             channel_steps=(2.0 ** (indices / octave)).tolist()))
    # a channel transform (klt) at every conv site it takes (2..512 channels), fitted on the site's
    # maps of the first 4 photos, at the site's pixel-domain step; the other sites in the pixel domain
    sites = len(streams) // -(-PHOTOS // SPEED_GROUP)
    variants["ctxrans, KLT where it fits"] = []
    for j, a in enumerate(streams):
        pixel = choose(a, 8, BUDGETS[1], coder="ctxrans", transform=False)
        if a.ndim == 4 and 2 <= a.shape[1] <= klt.MAX_CHANNELS:
            fitted = klt.fit(streams[j % sites])
            off = klt.offsets(streams[j % sites], 8, step=pixel["step"], **fitted)
            variants["ctxrans, KLT where it fits"].append(codecs.get("klt", bits=8, step=pixel["step"], offsets=off,
                                                                     **fitted))
        else:
            variants["ctxrans, KLT where it fits"].append(codecs.get("dctcm", bits=8, coder="ctxrans", **pixel))
    for label, coders in variants.items():
        enc_t, dec_t, z_enc, z_dec = [], [], [], []
        for _ in range(repeats):
            t = time.perf_counter()
            encoded = [c.encode(a) for c, a in zip(coders, streams)]
            enc_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            for c, e in zip(coders, encoded):
                c.decode(e)
            dec_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            zs = [zstd.compress(a.tobytes()) for a in streams]
            z_enc.append(time.perf_counter() - t)
            t = time.perf_counter()
            for z in zs:
                zstd_d.decompress(z)
            z_dec.append(time.perf_counter() - t)
        out[label] = {"encode_MBps": raw / statistics.median(enc_t) / 1e6,
                      "decode_MBps": raw / statistics.median(dec_t) / 1e6,
                      "ratio": raw / sum(len(e) for e in encoded), "budget": BUDGETS[1]}
    out["zstd-3"] = {"encode_MBps": raw / statistics.median(z_enc) / 1e6,
                     "decode_MBps": raw / statistics.median(z_dec) / 1e6, "ratio": raw / sum(len(z) for z in zs)}
    out["raw_MB"] = raw / 1e6
    return out


def markdown(results: dict) -> str:
    lines = ["| model | run | images | compression (8-bit) | top-1 % (float) | agreement % | output error | DCT sites |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for model, rows in results["models"].items():
        for r in rows:
            top1 = r["top1"]["compressed"]
            out_err = r.get("output_error", {}).get("compressed")  # rows from before it was measured lack it
            float_top1 = r["top1"]["float"]
            lines.append(f"| {model} | {r['run']} | {r['images']} | {r['compression']:.2f}x | "
                         f"{'-' if top1 is None else f'{100 * top1:.2f} ({100 * float_top1:.2f})'} | "
                         f"{100 * r['agreement']['compressed']:.1f} | {'-' if out_err is None else f'{out_err:.3f}'} | "
                         f"{r['dct_sites']}/{len(r['sites'])} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["efficientnet-lite0", "resnet20", "mobilenet-v1"])
    ap.add_argument("--weights-dir", type=Path, default=Path("runs/sparsify_table"),
                    help="where <model>-baseline/weights.pt of the Fashion-MNIST models are")
    ap.add_argument("--fmnist-images", type=int, default=10000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--speed", action=argparse.BooleanOptionalAction, default=True,
                    help="measure encode/decode speed (on a quiet machine)")
    ap.add_argument("--speed-only", action="store_true",
                    help="measure encode/decode speed again and keep every model's rows as they are")
    ap.add_argument("--runs", type=Path, default=Path("runs/dctcm"))
    ap.add_argument("--out", type=Path, default=HERE / "dctcm.json")
    ap.add_argument("--select", nargs="+", help="only the variants whose label starts with one of these")
    ap.add_argument("--views", action=argparse.BooleanOptionalAction, default=True,
                    help="also run Lite0 on 8 views of every photo, calibrated on the plain photos, and its "
                         "agreement targets calibrated on the views of half the photos, evaluated on the rest")
    args = ap.parse_args()
    if not FMNIST_CALIBRATION < args.fmnist_images <= 10000:
        ap.error(f"--fmnist-images: between {FMNIST_CALIBRATION + 1} and 10000 (the test split)")
    args.runs.mkdir(parents=True, exist_ok=True)
    # rows not run now stay (of other models, or of other variants with --select), with their commands
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"models": {}}
    results.pop("command", None)
    results |= {"budgets": BUDGETS, "output_budgets": OUTPUT_BUDGETS, "agreements": AGREEMENTS,
                "fmnist_agreement_calibration_images": FMNIST_CALIBRATION}
    def merge(key: str, rows: list[dict]) -> None:
        """rows replace their namesakes under key; with --select the others stay."""
        kept = {r["run"]: r for r in results["models"].get(key, [])} if args.select else {}
        results["models"][key] = list((kept | {r["run"]: r for r in rows}).values())

    for name in [] if args.speed_only else args.models:
        if name == "efficientnet-lite0":
            rows = run_model(name, None, "photos", None, args.runs, args.select)
            if args.views:
                photos = len(bundled_photos())
                merge(f"{name} (8 views per photo)", run_model(
                    name, None, "photo-views", None, args.runs / "views", args.select, calibration_images=photos,
                    only=VIEW_VARIANTS))
                merge(f"{name} (views of unseen photos)", run_model(
                    name, None, "photo-views", None, args.runs / "unseen", args.select,
                    split=photo_split(photos, 2 * len(VIEW_SCALES)),
                    only=["dctcm G16+ctxrans @agreement", "channel steps+ctxrans @agreement",
                          "KLT or channel steps+ctxrans @agreement"]))
        else:
            weights = args.weights_dir / f"{name}-baseline" / "weights.pt"
            if not weights.is_file():
                print(f"skipping {name}: no {weights} (train it with benchmarks/sparsify_table.py)")
                continue
            rows = run_model(name, weights, "fashion-mnist", args.fmnist_images, args.runs / f"n{args.fmnist_images}",
                             args.select, split=(range(FMNIST_CALIBRATION), range(FMNIST_CALIBRATION, args.fmnist_images)))
        merge(name, rows)
        command = (f"python benchmarks/dctcm.py --models {name} --fmnist-images {args.fmnist_images}"
                   + (" --select " + " ".join(f'"{s}"' for s in args.select) if args.select else ""))
        commands = results.setdefault("commands", {}).get(name, [])
        commands = [commands] if isinstance(commands, str) else commands
        results["commands"][name] = (commands if args.select else []) + [command] * (command not in commands)
    if args.speed or args.speed_only:
        results["speed"] = speed(args.repeats) | {"command": f"python benchmarks/dctcm.py --speed-only --repeats {args.repeats}"}
    atomic_write(args.out, json.dumps(results, indent=1))
    if args.out == HERE / "dctcm.json":
        write_page("dctcm")
    print(markdown(results))
    print(json.dumps(results.get("speed"), indent=1))


if __name__ == "__main__":
    main()
