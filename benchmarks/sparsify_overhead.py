"""Cost of training-time sparsification and of DDP on this machine.

1. Penalty overhead: training-step time (forward, backward, SGD step; batch 128 of 28x28) with no
   penalty, L1 and Hoyer attached, for resnet20 and mobilenet-v1; each configuration runs alone in a
   fresh process (20 timed steps, median), alternating, `--repeats` times; median over processes.
2. DDP: the time of the training part of one epoch over the first --ddp-images Fashion-MNIST
   images, one process (2 threads) against `torchrun --nproc_per_node 2` (1 thread each), same
   global batch. Evaluation is excluded (seconds as logged in metrics.jsonl).

    python benchmarks/sparsify_overhead.py [--repeats 7] [--ddp-images 20000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from actzip.fileio import atomic_write

HERE = Path(__file__).parent


STEP_SCRIPT = """
import statistics, sys, time, torch, torch.nn.functional as F
from actzip import models
from actzip.sparsify import Hoyer, L1, attach_penalty
name, cfg = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
model = models.load(name).train()
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
h = {"none": None, "l1": L1(1e-3), "hoyer": Hoyer(1e-4)}[cfg]
h = attach_penalty(model, h) if h else None
times = []
for i in range(25):
    t = time.perf_counter()
    loss = F.cross_entropy(model(x), y) + (h.take() if h else 0)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if i >= 5:
        times.append(time.perf_counter() - t)
print(statistics.median(times))
"""


def step_times(model_name: str, repeats: int) -> dict:
    """Median step time of each configuration, each measured alone in a fresh process (configurations
    sharing a process disturb one another), in alternating order over `repeats` rounds."""
    times = {k: [] for k in ("none", "l1", "hoyer")}
    for _ in range(repeats):
        for cfg in times:
            out = subprocess.run([sys.executable, "-c", STEP_SCRIPT, model_name, cfg], check=True,
                                 capture_output=True, text=True)
            times[cfg].append(float(out.stdout.strip().splitlines()[-1]))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"step_ms": {k: 1000 * v for k, v in med.items()},
            "overhead": {k: med[k] / med["none"] - 1 for k in ("l1", "hoyer")}}


def epoch_seconds(nproc: int, images: int) -> float:
    out = Path(tempfile.mkdtemp()) / "run"
    args = ["train", "--model", "resnet20", "--epochs", "1", "--train-limit", str(images), "--eval-images", "50",
            "--l1", "1e-3", "--out", str(out)]
    if nproc == 1:
        cmd = [sys.executable, "-m", "actzip", *args]
    else:
        cmd = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", str(nproc), "-m", "actzip", *args]
    subprocess.run(cmd, check=True, capture_output=True)
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["seconds"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ddp-images", type=int, default=20000)
    ap.add_argument("--out", type=Path, default=HERE / "sparsify_overhead.json")
    args = ap.parse_args()
    result = {"penalty": {m: step_times(m, args.repeats) for m in ("resnet20", "mobilenet-v1")}}
    print(json.dumps(result, indent=1), flush=True)
    one, two = epoch_seconds(1, args.ddp_images), epoch_seconds(2, args.ddp_images)
    result["ddp"] = {"images": args.ddp_images, "one_process_s": one, "two_processes_s": two,
                     "two_vs_one": two / one}
    print(json.dumps(result["ddp"], indent=1))
    atomic_write(args.out, json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
