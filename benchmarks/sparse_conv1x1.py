"""The sparse-input 1x1 kernels (actzip.runtime.native) against the best dense 1x1 conv on this CPU:
tiles of 4 pixels over the union of their non-zero channels, and (AVX-512) each pixel over its own.
The speedup is the faster kernel's, as `actzip.runtime.compile` picks per layer by timing both.

The dense reference is the faster of oneDNN's fused conv with its weight reordered for the input
(what actzip's compiled dense path and torch.compile call) and MKL's addmm on the same rows. Each
case times both in turns, `--rounds` rounds of 5 runs each, median; CPU time of this thread.

Inputs:
- real: the input of every 1x1 conv of pretrained EfficientNet-Lite0 with at least 30 % zeros, over
  `--images` of the bundled photos;
- synthetic: Lite0's late project shapes and 1-4 MB weights at set zero fractions, with zeros
  independent per value (the worst case for pixel tiles) or shared by runs of 8 neighbouring
  pixels (closer to real maps, whose neighbours share zero channels).

    python benchmarks/sparse_conv1x1.py [--threads 1] [--images 8] [--rounds 7]
    python benchmarks/sparse_conv1x1.py --table   # docs/results/sparse_conv1x1.md from the JSON

The JSON holds one run per CPU (`machine.cpu`): a run replaces its CPU's and keeps the others.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from machine import EARLIER, cpu
from pages import write_page
from torch import nn

from actzip.runtime import native

HERE = Path(__file__).parent
_pointwise = torch.ops.mkldnn._convolution_pointwise
_reorder = torch.ops.mkldnn._reorder_convolution_weight
SYNTHETIC = [  # (name, pixels, cin, cout)
    ("lite0 project 7x7 b8", 392, 1152, 192), ("lite0 project 14x14 b8", 1568, 672, 112),
    ("lite0 head-in 7x7 b8", 392, 1152, 320), ("1 MB weight 14x14 b8", 1568, 512, 512),
    ("4 MB weight 7x7 b8", 392, 1024, 1024),
]
ZEROS = (0.0, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)


def thread_ms(fn) -> float:
    start = time.thread_time()
    fn()
    return 1e3 * (time.thread_time() - start)


def compare(x: torch.Tensor, weight: torch.Tensor, rounds: int) -> dict:
    """ms of the best dense 1x1 and of the sparse kernel on rows `x` (pixels, cin)."""
    pixels, cin = x.shape
    cout = weight.shape[0]
    bias = torch.zeros(cout)
    x4 = x.reshape(1, pixels, 1, cin).permute(0, 3, 1, 2)  # channels_last (1, cin, pixels, 1)
    reordered = _reorder(weight.contiguous(memory_format=torch.channels_last), [0, 0], [1, 1], [1, 1], 1,
                         list(x4.shape))
    matrix = weight.reshape(cout, cin).t().contiguous()
    packed, packed_bias = native.packed_weight(weight, bias)
    out = torch.empty(pixels, cout)
    lists = torch.empty(native.lists_size(pixels, cin), dtype=torch.int32)
    runs = {"onednn": lambda: _pointwise(x4, reordered, bias, [0, 0], [1, 1], [1, 1], 1, "none", [], ""),
            "mkl": lambda: torch.addmm(bias, x, matrix),
            "tiles": lambda: native.sparse_conv1x1(x, packed, packed_bias, out, lists),
            "pixel": lambda: native.sparse_conv1x1(x, packed, packed_bias, out, lists, by_pixel=True)}
    times = {k: [] for k in runs}
    for fn in runs.values():
        fn()
    for _ in range(rounds):
        for name, fn in runs.items():
            times[name] += [thread_ms(fn) for _ in range(5)]
    ms = {k: statistics.median(v) for k, v in times.items()}
    spread = {k: (statistics.quantiles(v, n=4)[2] - statistics.quantiles(v, n=4)[0]) / ms[k] for k, v in times.items()}
    dense = min(ms["onednn"], ms["mkl"])
    return {"ms": ms, "iqr_over_median": spread, "speedup": dense / min(ms["tiles"], ms["pixel"]),
            "tiles_speedup": dense / ms["tiles"], "pixel_speedup": dense / ms["pixel"],
            "zeros": float((x == 0).float().mean()), "union4": union_fraction(x)}


def union_fraction(x: torch.Tensor) -> float:
    """Mean fraction of channels non-zero in at least one pixel of each tile of 4."""
    pixels = x.shape[0] // 4 * 4
    return float((x[:pixels].reshape(-1, 4, x.shape[1]) != 0).any(1).float().mean())


def synthetic_rows(pixels: int, cin: int, zeros: float, correlated: bool, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(pixels, cin, generator=g).abs()
    runs = 8 if correlated else 1
    off = torch.rand(-(-pixels // runs), cin, generator=g) < zeros
    x[off.repeat_interleave(runs, 0)[:pixels]] = 0
    return x


def lite0_inputs(images: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """name: (input rows, weight) of every 1x1 conv of Lite0 whose input is at least 30 % zeros."""
    from actzip import models
    from actzip.data import open_images

    model = models.load("efficientnet-lite0").eval()
    photos = open_images("photos", models.preprocessing("efficientnet-lite0"))
    x = torch.stack([photos[i][0] for i in range(min(images, len(photos)))])
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)}
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: seen.__setitem__(n, a[0])) for n, m in convs.items()]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return {n: (a.permute(0, 2, 3, 1).reshape(-1, a.shape[1]).contiguous(), convs[n].weight.detach())
            for n, a in seen.items() if float((a == 0).float().mean()) >= 0.3}


def runs(saved) -> list[dict]:
    """The runs of the JSON, one per CPU; a file from before it named the CPU holds one run."""
    return [{"cpu": EARLIER, **saved}] if isinstance(saved, dict) else saved


def table(saved) -> str:
    """A section per CPU (see `run_table`)."""
    return "\n".join(f"## {r['cpu']}\n\n" + run_table(r) for r in runs(saved))


def run_table(result: dict) -> str:
    """Speedups over the best dense 1x1: real maps per conv, synthetic maps per zero fraction."""
    lines = [f"ISA {result['isa']}, {result['threads']} thread(s). Real maps (pretrained Lite0, bundled photos):", "",
             "| conv | pixels x cin -> cout | zeros | union of 4 | tiles | pixel by pixel | speedup |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["real"]:
        p, cin, cout = r["shape"]
        lines.append(f"| {r['conv']} | {p} x {cin} -> {cout} | {r['zeros']:.2f} | {r['union4']:.2f} | "
                     f"{r['tiles_speedup']:.2f}x | {r['pixel_speedup']:.2f}x | {r['speedup']:.2f}x |")
    zeros = sorted({r["target_zeros"] for r in result["synthetic"]})
    lines += ["", "Synthetic maps (independent zeros / zeros shared by runs of 8 pixels), speedup of the faster "
              "kernel by zero fraction:",
              "", "| case | zeros: " + " | ".join(f"{z:.2f}" for z in zeros) + " |", "| --- | " + "---: | " * len(zeros)]
    for case in dict.fromkeys(r["case"] for r in result["synthetic"]):
        for correlated in (False, True):
            rows = {r["target_zeros"]: r for r in result["synthetic"] if r["case"] == case
                    and r["correlated"] == correlated}
            lines.append(f"| {case}, {'shared' if correlated else 'independent'} | "
                         + " | ".join(f"{rows[z]['speedup']:.2f}x" for z in zeros) + " |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path, default=HERE / "sparse_conv1x1.json")
    ap.add_argument("--table", action="store_true", help="only write docs/results/sparse_conv1x1.md from the JSON")
    args = ap.parse_args()
    if args.table:
        print("wrote", write_page("sparse_conv1x1"))
        return
    torch.set_num_threads(args.threads)
    if not native.available():
        raise SystemExit("the compiled kernels are not built: pip install -e . with a C compiler")
    result = {"cpu": cpu(), "isa": native.isa(), "threads": args.threads, "rounds": args.rounds, "real": [], "synthetic": []}
    for name, (x, weight) in lite0_inputs(args.images).items():
        row = {"conv": name, "shape": [x.shape[0], x.shape[1], weight.shape[0]], **compare(x, weight, args.rounds)}
        result["real"].append(row)
        print(json.dumps({k: row[k] for k in ("conv", "shape", "zeros", "union4", "tiles_speedup", "pixel_speedup")}),
              flush=True)
    for i, (name, pixels, cin, cout) in enumerate(SYNTHETIC):
        weight = torch.randn(cout, cin, 1, 1, generator=torch.Generator().manual_seed(i))
        for correlated in (False, True):
            for zeros in ZEROS:
                x = synthetic_rows(pixels, cin, zeros, correlated, i)
                row = {"case": name, "shape": [pixels, cin, cout], "correlated": correlated, "target_zeros": zeros,
                       **compare(x, weight, args.rounds)}
                result["synthetic"].append(row)
                print(json.dumps({k: row[k] for k in ("case", "correlated", "zeros", "tiles_speedup",
                                                      "pixel_speedup")}), flush=True)
    others = [r for r in runs(json.loads(args.out.read_text())) if r["cpu"] != result["cpu"]] \
        if args.out.is_file() else []
    args.out.write_text(json.dumps(others + [result], indent=1))
    if args.out == HERE / "sparse_conv1x1.json":
        print("wrote", write_page("sparse_conv1x1"))


if __name__ == "__main__":
    main()
