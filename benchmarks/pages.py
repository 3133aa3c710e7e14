"""docs/results/: one page per benchmark, its tables generated from the benchmark's JSON.

Each page says what was measured and by which command; the numbers come only from the JSON, so
rerunning a benchmark and then this script is all it takes to update the docs. Nothing here is
edited by hand.

    python benchmarks/pages.py           # write docs/results/*.md
    python benchmarks/pages.py --check   # exit 1 if a page differs from what its JSON gives
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

HERE = Path(__file__).parent
PAGES = HERE.parent / "docs" / "results"
sys.path.insert(0, str(HERE))  # the scripts import their siblings


def _script(name: str):
    """A benchmark script as a module (for its table function; its main does not run)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _table(head: list[str], rows: list[list], right: int = 1) -> str:
    """A markdown table; columns from `right` on are right-aligned."""
    align = ["---" if i < right else "---:" for i in range(len(head))]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]) + "\n"


def _codecs(d: dict) -> str:
    parts = [f"{d['repeats']} repeats, {d['threads']} thread(s), {d['machine']}.\n"]
    for name, ds in d["datasets"].items():
        rows = [[c["codec"], f"{c['ratio']:.3f}x", f"{c['bits_per_value']:.3f}", f"{c['encode_MBps']:.0f}",
                 f"{c['decode_MBps']:.0f}"] for c in ds["codecs"]]
        rows += [[c["codec"], f"{c['ratio']:.3f}x", "", f"{c['encode_MBps']:.0f}", f"{c['decode_MBps']:.0f}"]
                 for c in ds["plain_baselines"]]
        parts += [f"\n## {name}\n\n{ds['values']:,} values in {ds['streams']} streams; order-0 entropy bound "
                  f"{ds['order0_entropy_ratio']:.3f}x.\n\n",
                  _table(["codec", "ratio", "bits/value", "encode MB/s", "decode MB/s"], rows)]
    return "".join(parts)


def _analyze_speed(d: dict) -> str:
    rows = [[k, f"{v:.3g}" if isinstance(v, float) else v] for k, v in d.items() if not isinstance(v, (dict, list))]
    rows += [[f"peak RSS at {n} images (MB)", f"{mb:.0f}"] for n, mb in d["peak_rss_mb"].items()]
    return _table(["quantity", "value"], rows)


def _channel_klt(d: dict) -> str:
    rows = [[budget, f"{b['pixel_megabytes']:.2f}", f"{b['best_of_both_megabytes']:.2f}", f"{100 * b['smaller_by']:.1f} %",
             f"{b['sites_klt_smaller']} of {d['sites']}"] for budget, b in d["budgets"].items()]
    return (f"Fitted on {d['photos_fit']} photos, measured on {d['photos_measured']}: `{d['command']}`\n\n"
            + _table(["site budget", "pixel domain MB", "best of both MB", "smaller by", "sites where KLT wins"], rows))


def _agreement_rows(rows: list[dict]) -> list[list]:
    return [[r["run"], f"{r['compression']:.2f}x", f"{100 * r['agreement']['compressed']:.2f} %",
             f"{r['output_error']['compressed']:.2e}", r["images"]] for r in rows]


AGREEMENT_HEAD = ["run", "compression", "agreement", "output error", "images"]


def _channel_steps(d: dict) -> str:
    parts = [f"`{d['command']}`\n"]
    for model, m in d["models"].items():
        parts += [f"\n## {model} ({m['weights']})\n\n", _table(AGREEMENT_HEAD, _agreement_rows(m["rows"]))]
    return "".join(parts)


def _unseen_photos(d: dict) -> str:
    return "".join(f"`{c}`\n\n" for c in d["commands"]) + _table(AGREEMENT_HEAD, _agreement_rows(d["rows"].values()))


def _context_entropy(d: dict) -> str:
    rows = [[name, f"{c['megabytes']:.2f}", f"{100 * c['smaller_by']:.1f} %"] for name, c in d["contexts"].items()]
    return (f"{d['photos']} photos, site budget {d['budget']}: `{d['command']}`\n\n"
            + _table(["context", "MB", "smaller than ctxrans by"], rows))


def _sparsify_overhead(d: dict) -> str:
    rows = [[model, f"{p['step_ms']['none']:.0f}", f"{100 * p['overhead']['l1']:.1f} %",
             f"{100 * p['overhead']['hoyer']:.1f} %"] for model, p in d["penalty"].items()]
    ddp = d["ddp"]
    return (_table(["model", "step ms (no penalty)", "L1 overhead", "Hoyer overhead"], rows)
            + f"\nDDP over {ddp['images']} images: one process {ddp['one_process_s']:.1f} s, two processes "
              f"{ddp['two_processes_s']:.1f} s ({ddp['two_vs_one']:.2f}x the time).\n")


@dataclass(frozen=True)
class Page:
    title: str
    about: str
    render: Callable[[object], str]


def _from_script(script: str, function: str, key: str | None = None) -> Callable[[object], str]:
    def render(data):
        return getattr(_script(script), function)(data[key] if key else data)

    return render


PAGES_BY_JSON = {
    "runtime": Page("Compiled models against onnxruntime", "End-to-end latency, `python benchmarks/runtime.py`.",
                    _from_script("runtime", "table")),
    "runtime_layers": Page("Compiled models against onnxruntime, kernel call by kernel call",
                           "Per-layer times, `python benchmarks/runtime_layers.py`.",
                           _from_script("runtime_layers", "table")),
    "rows_conv": Page("The kept-pixel conv kernel, layer by layer", "Against oneDNN's dense conv on ResNet18's shapes, "
                      "`python benchmarks/rows_conv.py`.", _from_script("rows_conv", "table")),
    "sparse_conv1x1": Page("The sparse-input 1x1 kernel", "Against the best dense 1x1 conv, "
                           "`python benchmarks/sparse_conv1x1.py`.", _from_script("sparse_conv1x1", "table")),
    "semistructured_speed": Page("Semi-structured masks: latency", "`python benchmarks/semistructured.py speed`.",
                                 _from_script("semistructured", "speed_markdown", "rows")),
    "semistructured_accuracy": Page("Semi-structured masks: accuracy",
                                    "`python benchmarks/semistructured.py accuracy`.",
                                    _from_script("semistructured", "accuracy_markdown", "models")),
    "sparsify_table": Page("Sparsified fine-tuning (Georgiadis)", "`python benchmarks/sparsify_table.py`.",
                           _from_script("sparsify_table", "markdown")),
    "dctcm": Page("DCT-CM and lossy compression in the loop", "`python benchmarks/dctcm.py`.",
                  _from_script("dctcm", "markdown")),
    "codecs": Page("Codecs on real activation maps", "Every codec beside plain zstd and lz4, "
                   "`python benchmarks/codecs.py`.", _codecs),
    "codec_peers": Page("Lossless coders against JPEG-XL, JPEG-LS, WebP, blosc2 and zstd",
                        "On the same real maps, `python benchmarks/codec_peers.py`.",
                        _from_script("codec_peers", "table")),
    "analyze_speed": Page("Speed of `actzip analyze`", "`python benchmarks/analyze_speed.py`.", _analyze_speed),
    "channel_klt": Page("Channel transforms (klt) against the pixel domain", "`python benchmarks/channel_klt.py`.",
                        _channel_klt),
    "channel_steps": Page("Channel-weighted steps at an agreement target", "`python benchmarks/channel_steps.py`.",
                          _channel_steps),
    "unseen_photos": Page("Lossy settings on photos not used for tuning", "`python benchmarks/unseen_photos.py`.",
                          _unseen_photos),
    "context_entropy": Page("What each context of the fast coder buys", "`python benchmarks/context_entropy.py`.",
                            _context_entropy),
    "refinement_bits": Page("What 16-bit codes add over 8-bit ones", "`python benchmarks/refinement_bits.py`.",
                            _from_script("refinement_bits", "table")),
    "ctx_mixing": Page("What each model of ctx's mixing model buys", "`python benchmarks/ctx_mixing.py`.",
                       _from_script("ctx_mixing", "table")),
    "sparsify_overhead": Page("Cost of the activation penalties and of DDP",
                              "`python benchmarks/sparsify_overhead.py`.", _sparsify_overhead),
}


def render(name: str) -> str:
    page = PAGES_BY_JSON[name]
    data = json.loads((HERE / f"{name}.json").read_text())
    return (f"# {page.title}\n\n{page.about}\n\n<!-- generated by benchmarks/pages.py from benchmarks/{name}.json: "
            f"rerun the benchmark and the script; do not edit -->\n\n{page.render(data).rstrip()}\n")


def write_page(name: str) -> Path:
    """Regenerate the page of benchmark `name` and the index (its script calls this after writing
    the JSON)."""
    path = PAGES / f"{name}.md"
    path.write_text(render(name))
    (PAGES / "index.md").write_text(index())
    return path


def index() -> str:
    lines = ["# Results", "", "Every page is generated from a benchmark's JSON by `benchmarks/pages.py`.", ""]
    return "\n".join(lines + [f"- [{p.title}]({name}.md)" for name, p in PAGES_BY_JSON.items()]) + "\n"


def pages() -> dict[Path, str]:
    return {PAGES / "index.md": index()} | {PAGES / f"{name}.md": render(name) for name in PAGES_BY_JSON}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 where a page is out of date")
    args = ap.parse_args()
    stale = [path for path, text in pages().items() if not path.is_file() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"out of date: {path} (run python benchmarks/pages.py)")
        return 1 if stale else 0
    PAGES.mkdir(parents=True, exist_ok=True)
    for path, text in pages().items():
        path.write_text(text)
    print(f"wrote {len(pages())} pages in {PAGES}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
