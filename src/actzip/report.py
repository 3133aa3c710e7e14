"""Writing a report: report.json (the data), report.md (for people), PNG bar charts."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

from .errors import ActzipError
from .fileio import atomic_write, writable_dir


def _codecs(report: dict) -> list[str]:
    return list(report["totals"]["compression"])


def markdown(report: dict) -> str:
    """report.md: the totals per codec, then a table per site and one of coded sizes per bit width
    (each narrow enough to read; every figure is also in report.json)."""
    t = report["totals"]
    bits = [str(b) for b in report["bits"]]
    weights = report.get("weights", "")
    lines = [
        f"# actzip analysis of {report['model']}" + (" (random weights: an untrained network)"
                                                     if weights.startswith("random") else ""),
        "",
        f"{report['images']} images from `{report['image_source']}`; {len(report['sites'])} activation sites; "
        f"{t['zero_fraction']:.1%} zeros; zero-skipping speedup {t['theoretical_speedup']:.2f}x "
        f"({t['macs'] / 1e6 / max(report['images'], 1):.1f} M MACs per image).",
        "",
        "| codec | " + " | ".join(f"{b}-bit ratio" for b in bits) + " |",
        "| --- | " + " | ".join("---:" for _ in bits) + " |",
    ]
    for c in _codecs(report):
        ratios = [t["compression"][c][b] for b in bits]
        lines.append(f"| {c} | " + " | ".join(f"{r:.2f}x" + (" (larger than raw)" if r < 1 else "") for r in ratios)
                     + " |")
    lines += ["", "## Sites", "", "| site | shape | zeros | MACs/img (M) | speedup |", "| --- | --- | ---: | ---: | ---: |"]
    for s in report["sites"]:
        lines.append(f"| {s['name']} | {'x'.join(map(str, s['shape']))} | {s['zero_fraction']:.1%} | "
                     f"{s['macs'] / 1e6 / max(report['images'], 1):.2f} | "
                     + (f"{s['macs'] / s['effective_macs']:.2f}x |" if s["effective_macs"] else "inf |"))
    for b in bits:
        lines += ["", f"## Bits per value at {b} bits", "", "| site | " + " | ".join(_codecs(report)) + " |",
                  "| --- |" + " ---: |" * len(_codecs(report))]
        for s in report["sites"]:
            lines.append(f"| {s['name']} | " + " | ".join(f"{s['bits'][c][b] / s['numel']:.2f}"
                                                         for c in _codecs(report)) + " |")
    return "\n".join(lines) + "\n"


def _bar_charts(report: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sites = report["sites"]
    x = list(range(len(sites)))
    labels = [s["name"] for s in sites]
    width = max(8.0, 0.22 * len(sites))
    paths = []

    fig, ax = plt.subplots(figsize=(width, 4))
    ax.bar(x, [s["zero_fraction"] for s in sites], color="tab:blue")
    ax.set_ylabel("zero fraction")
    ax.set_xlabel("activation site: the input of the layer named")
    ax.set_ylim(0, 1)
    ax.set_title(f"{report['model']}: zeros in the input of each layer ({report['images']} images)")
    ax.set_xticks(x, labels, rotation=90, fontsize=6)
    fig.tight_layout()
    paths.append(_save(fig, out / "zero_fraction.png"))

    for b in map(str, report["bits"]):
        paths.append(_compression_chart(report, b, width, out / f"compression_{b}bit.png"))
    return paths


MAX_SERIES = 6  # bars per site a reader can tell apart


def chart_codecs(report: dict, bits: str) -> list[str]:
    """The codecs a compression chart shows: the MAX_SERIES with the best total ratio at `bits`."""
    totals = report["totals"]["compression"]
    return sorted(_codecs(report), key=lambda c: -totals[c][bits])[:MAX_SERIES]


def _compression_chart(report: dict, b: str, width: float, path: Path) -> Path:
    import matplotlib.pyplot as plt

    sites, codecs = report["sites"], chart_codecs(report, b)
    x = list(range(len(sites)))
    fig, ax = plt.subplots(figsize=(width, 4))
    step = 0.8 / len(codecs)
    for i, c in enumerate(codecs):
        ratios = [s["numel"] * int(b) / s["bits"][c][b] if s["bits"][c][b] else 0 for s in sites]
        ax.bar([v - 0.4 + step * (i + 0.5) for v in x], ratios, width=step, label=c)
    ax.axhline(1, color="grey", lw=0.8)
    ax.set_ylabel(f"compression ratio over raw {b}-bit codes")
    ax.set_xlabel("activation site: the input of the layer named")
    ax.set_title(f"{report['model']}: compression of the input of each layer at {b} bits"
                 + (f" (the {len(codecs)} best codecs)" if len(codecs) < len(_codecs(report)) else ""))
    ax.set_xticks(x, [s["name"] for s in sites], rotation=90, fontsize=6)
    ax.legend(fontsize=7, ncol=min(6, len(codecs)))
    fig.tight_layout()
    return _save(fig, path)


EVALUATE_KEYS = ("codec", "bits", "compression", "agreement", "output_error")


def plot_runs(reports: dict[str, dict], path: Path) -> Path:
    """Rate against distortion for `evaluate` reports (name: report), CompressAI-style: bits per
    value (the bit width over the compression ratio) against the top-1 agreement with the float
    model and against the output's relative squared error; the runs of one codec setting joined by
    a line, in order of rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name, r in reports.items():
        missing = [k for k in EVALUATE_KEYS if k not in r]
        if missing or not isinstance(r.get("agreement"), dict):
            raise ActzipError(f"{name} is not an `actzip evaluate` report (no {', '.join(missing) or 'agreement'})")
    groups: dict[str, list] = {}
    for r in reports.values():
        setting = r["codec"] + "".join(f" {k}={v}" for k, v in sorted(r.get("codec_params", {}).items()) if k != "budget")
        groups.setdefault(setting, []).append((r["bits"] / r["compression"], 100 * r["agreement"]["compressed"],
                                               r["output_error"]["compressed"]))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for setting, points in list(groups.items())[:MAX_SERIES]:
        rate, agreement, error = zip(*sorted(points))
        left.plot(rate, agreement, marker="o", label=setting)
        right.plot(rate, error, marker="o", label=setting)
    left.set(xlabel="bits per activation value", ylabel="top-1 agreement with the float model (%)",
             title="agreement against rate")
    right.set(xlabel="bits per activation value", ylabel="relative squared error of the output", yscale="log",
              title="output error against rate")
    left.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buf.getvalue())
    return path


def _json_safe(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no infinity; null means "unbounded" here
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def write_report(report: dict, out: str | Path) -> list[Path]:
    """Write report.json, report.md and the charts into `out`; return the paths written."""
    out = writable_dir(out)
    atomic_write(out / "report.json", json.dumps(_json_safe(report), indent=1))
    atomic_write(out / "report.md", markdown(report))
    return [out / "report.json", out / "report.md", *_bar_charts(report, out)]
