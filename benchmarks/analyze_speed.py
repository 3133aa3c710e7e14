"""Throughput and peak memory of `actzip analyze` on EfficientNet-Lite0, against plain inference.

Images are the bundled photos, preprocessed once and cycled to the requested count (so JPEG decoding
is not what is measured). Throughput: images/s of the measurement pass and of the whole analyze (both
passes), against plain no-grad inference of the same batches in the same process, median of repeats.
Memory: peak RSS of analyze in fresh subprocesses at two image counts.

    python benchmarks/analyze_speed.py [--images 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from actzip import AnalyzeConfig, measure, models
from actzip.analysis import calibrate
from actzip.data import open_images

HERE = Path(__file__).parent


class Cycled(torch.utils.data.Dataset):
    def __init__(self, tensors, count):
        self.tensors, self.count = tensors, count

    def __len__(self):
        return self.count

    def __getitem__(self, i):
        return self.tensors[i % len(self.tensors)], -1


def dataset(count: int) -> Cycled:
    photos = open_images("photos", models.preprocessing("efficientnet-lite0"))
    return Cycled([photos[i][0] for i in range(len(photos))], count)


def peak_rss_mb(count: int) -> float:
    """Run analyze over `count` images in a fresh process and return its peak RSS."""
    code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import analyze_speed as b, resource; "
            f"from actzip import measure, models, AnalyzeConfig; "
            f"measure(models.load('efficientnet-lite0'), b.dataset({count}), AnalyzeConfig(batch_size=16, codecs=())); "
            f"print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", type=Path, default=HERE / "analyze_speed.json")
    args = ap.parse_args()

    model = models.load("efficientnet-lite0")
    data = dataset(args.images)
    # the statistics alone (the streams of the codec suite have their own benchmark)
    config = AnalyzeConfig(bits=(8, 16), batch_size=args.batch_size, codecs=())
    batches = [torch.stack([data[j][0] for j in range(i, min(i + args.batch_size, len(data)))])
               for i in range(0, len(data), args.batch_size)]
    measure(model, Cycled(data.tensors, 32), config)  # warm-up: numba compile, allocator

    plain, full, measure_only = [], [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        with torch.no_grad():
            for x in batches:
                model(x)
        plain.append(args.images / (time.perf_counter() - t))
        t = time.perf_counter()
        calibrate(model, data, config)
        t_cal = time.perf_counter() - t
        t = time.perf_counter()
        measure(model, data, config)
        t_full = time.perf_counter() - t
        full.append(args.images / t_full)
        measure_only.append(args.images / (t_full - t_cal))

    result = {
        "model": "efficientnet-lite0", "images": args.images, "batch_size": args.batch_size, "bits": [8, 16],
        "threads": torch.get_num_threads(), "machine": platform.machine(), "repeats": args.repeats,
        "plain_inference_img_per_s": statistics.median(plain),
        "analyze_img_per_s": statistics.median(full),
        "measure_pass_img_per_s": statistics.median(measure_only),
        "analyze_vs_plain": statistics.median(full) / statistics.median(plain),
        "peak_rss_mb": {str(n): peak_rss_mb(n) for n in (100, args.images)},
    }
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
