"""The kept-pixel conv kernel against oneDNN's dense conv, layer by layer, on ResNet18's shapes.

Each row is one conv with random pixel masks at sparsity s: the sparse path of `CompiledConv2d`
(the compiled `rows_conv` over the kept pixels, then the masked pixels' value) and the dense path
(oneDNN, then the masked pixels' value), timed in turns in one process, median of rounds. The
ratio sparse / dense would be 1 - s for a kernel as fast as oneDNN per multiply-add.

    python benchmarks/rows_conv.py [--batch 8] [--sparsities 0.3 0.5] [--rounds 9]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from actzip.runtime import native
from actzip.runtime.conv import CompiledConv2d, Workspace
from actzip.runtime.fold import folded
from actzip.runtime.memory import hold_freed_memory
from actzip.sparsify.pixelmask import PixelMask, attach_pixel_masks
from pages import write_page

HERE = Path(__file__).parent
SHAPES = {  # name: (in, out, kernel, stride, input size) of ResNet18's convs
    "stem 7x7/2": (3, 64, 7, 2, 224), "layer1 3x3": (64, 64, 3, 1, 56), "layer2 3x3/2": (64, 128, 3, 2, 56),
    "layer2 3x3": (128, 128, 3, 1, 28), "layer3 3x3": (256, 256, 3, 1, 14), "layer4 3x3": (512, 512, 3, 1, 7),
}


def one(name: str, batch: int, sparsity: float, rounds: int) -> dict:
    cin, cout, k, stride, hw = SHAPES[name]
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
    x = torch.relu(torch.randn(batch, cin, hw, hw)).contiguous(memory_format=torch.channels_last)
    model = nn.Sequential(conv, nn.BatchNorm2d(cout)).eval()
    attach_pixel_masks(model, PixelMask(sparsity), x).update(1.0)
    fast = CompiledConv2d(folded(conv, model[1]), (0.0, float("inf")), tuple(x.shape), Workspace())
    times = {"sparse": [], "dense": []}
    with torch.no_grad():
        for _ in range(rounds):
            for path in times:
                run = getattr(fast, path)
                run(x)
                start = time.perf_counter()
                run(x)
                times[path].append(time.perf_counter() - start)
    ms = {p: 1e3 * statistics.median(v) for p, v in times.items()}
    return {"conv": name, "batch": batch, "sparsity": sparsity, "ms": ms, "sparse_over_dense": ms["sparse"] / ms["dense"]}


def table(result: dict) -> str:
    lines = [f"ISA {result['isa']}, {result['threads']} thread(s), batch {result['batch']}, median of "
             f"{result['rounds']} rounds; 1 - s is what a kernel as fast as oneDNN would reach.", "",
             "| conv | s | dense ms | sparse ms | sparse / dense | 1 - s |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["rows"]:
        lines.append(f"| {r['conv']} | {r['sparsity']:.1f} | {r['ms']['dense']:.2f} | {r['ms']['sparse']:.2f} | "
                     f"{r['sparse_over_dense']:.2f} | {1 - r['sparsity']:.2f} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--sparsities", nargs="+", type=float, default=[0.3, 0.5])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--out", type=Path, default=HERE / "rows_conv.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    hold_freed_memory()
    warnings.simplefilter("ignore")
    rows = []
    for name in SHAPES:
        for s in args.sparsities:
            rows.append(one(name, args.batch, s, args.rounds))
            print(rows[-1], flush=True)
    result = {"isa": native.isa(), "threads": 1, "batch": args.batch, "rounds": args.rounds, "rows": rows}
    args.out.write_text(json.dumps(result, indent=1))
    if args.out == HERE / "rows_conv.json":
        print("wrote", write_page("rows_conv"))


if __name__ == "__main__":
    main()
