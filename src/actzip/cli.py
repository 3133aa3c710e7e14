"""`actzip` on the command line. The only place that prints or exits: every ActzipError (and a
bad-argument ValueError) becomes one line on stderr and exit code 2."""

from __future__ import annotations

import functools
import sys
from dataclasses import fields
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import ActzipError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Compress and accelerate the activation maps of CNNs.")
out = Console(width=None if sys.stdout.isatty() else 160)  # logs and pipes get whole rows
err = Console(stderr=True)


def _show_version(value: bool):
    if value:
        from . import __version__

        out.print(f"actzip {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                          help="Show actzip's version and exit.")):
    """Compress and accelerate the activation maps of CNNs."""


def _one_line_warnings():
    def show(message, category, filename, lineno, file=None, line=None):
        err.print(f"actzip: warning: {message}", highlight=False, markup=False)

    warnings.showwarning = show


def _cli_errors(fn):
    """Turn the errors users can cause into a one-line message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _one_line_warnings()
        try:
            return fn(*args, **kwargs)
        except (ActzipError, ValueError) as e:
            err.print(f"actzip: error: {e}", highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("actzip: interrupted")
            raise typer.Exit(130) from None

    return wrapper


def _parse_bits(text: str) -> tuple[int, ...]:
    from .quant import check_bits

    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ActzipError(f"--bits takes comma-separated integers, got {text!r}") from None
    if not values:
        raise ActzipError("--bits needs at least one bit width")
    for b in values:
        check_bits(b)
    return values


def _codec_params(pairs: list[str], options: tuple[str, ...] = ("bits",)) -> dict:
    """`-p key=value` pairs as codec keywords; values are read as JSON (numbers, true/false, lists).
    A key that is also a command option (`options`) is refused: it has one place to be set."""
    import json

    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ActzipError(f"--param takes key=value, got {pair!r}")
        if key.strip() in options:
            raise ActzipError(f"-p {key.strip()}=... clashes with --{key.strip().replace('_', '-')}: set it there")
        try:
            params[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            params[key.strip()] = value
    return params


IMAGE_PHASES = ("calibrate", "measure", "evaluate", "load calibration images")  # the others count their own items
PLAIN_EVERY = 30.0  # seconds between plain progress lines when stderr is not a terminal


def _progress():
    """(a rich progress bar, the `progress(phase, done, total)` callback that drives it). Phases
    over images show images per second, the others (sites, budgets, transforms) their count alone.
    Where stderr is not a terminal, a plain line per phase every PLAIN_EVERY seconds instead."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=err, transient=True)
    tasks, said = {}, {}

    def update(phase: str, done: int, total: int):
        if phase not in tasks:
            tasks[phase] = bar.add_task(phase, total=total, rate="")
        task = bar.tasks[tasks[phase]]
        rate = f"{done / task.elapsed:.1f} img/s" if task.elapsed and phase in IMAGE_PHASES else ""
        bar.update(tasks[phase], completed=done, rate=rate)
        if not err.is_terminal and (time.monotonic() - said.get(phase, 0) >= PLAIN_EVERY or done == total):
            said[phase] = time.monotonic()
            err.print(f"{phase}: {done}/{total}" + (f" ({rate})" if rate else ""), highlight=False)

    return bar, update


def _site_table(report: dict) -> Table:
    """Per site: zeros, MACs, zero-skipping speedup, and the best codec at each bit width."""
    bits = [str(b) for b in report["bits"]]
    streams = report["codecs"]["streams"] or list(report["totals"]["compression"])
    t = Table(title=f"{report['model']}: {report['images']} images, best codec per site (bits per value)",
              title_justify="left")
    for col in ("#", "site", "shape", "zero %", "MACs/img", "skip x"):
        t.add_column(col, justify="left" if col in ("site", "shape") else "right")
    for b in bits:
        t.add_column(f"best {b}-bit", justify="right")
    n = max(report["images"], 1)
    for i, s in enumerate(report["sites"]):
        speed = s["macs"] / s["effective_macs"] if s["effective_macs"] else float("inf")
        row = [str(i), s["name"], "x".join(map(str, s["shape"])), f"{100 * s['zero_fraction']:.1f}",
               f"{s['macs'] / n / 1e6:.2f}M", f"{speed:.2f}"]
        for b in bits:
            best = min(streams, key=lambda c: s["bits"][c][b])
            row.append(f"{best} {s['bits'][best][b] / s['numel']:.2f}")
        t.add_row(*row)
    return t


def _codec_table(report: dict) -> Table:
    """Total compression ratio (raw bits / coded bits) of every codec at every bit width."""
    bits = [str(b) for b in report["bits"]]
    tot = report["totals"]
    t = Table(title="compression, all sites", title_justify="left")
    t.add_column("codec")
    for b in bits:
        t.add_column(f"{b}-bit", justify="right")
    for c, per_bits in tot["compression"].items():
        t.add_row(c + (" (bound)" if c not in report["codecs"]["streams"] else ""),
                  *[_ratio(per_bits[b]) for b in bits])
    return t


def _preprocessing(base, size: Optional[int], mean: Optional[str], std: Optional[str]):
    """The model's preprocessing with the --size, --mean and --std given."""
    import dataclasses

    def floats(text: Optional[str], name: str) -> Optional[tuple[float, ...]]:
        if text is None:
            return None
        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            raise ValueError(f"--{name} takes comma-separated numbers, got {text!r}") from None
        if len(values) not in (1, 3) or (name == "std" and min(values) <= 0):
            raise ValueError(f"--{name} takes 1 (grayscale) or 3 values" + (", all > 0" if name == "std" else "")
                             + f", got {text!r}")
        return values

    changes = {k: v for k, v in (("mean", floats(mean, "mean")), ("std", floats(std, "std"))) if v is not None}
    if size is not None:
        if size < 1:
            raise ValueError(f"--size must be at least 1, got {size}")
        changes |= {"resize": size, "crop": size}
    result = dataclasses.replace(base, **changes)
    if len(result.mean) != len(result.std):
        raise ValueError(f"--mean and --std need as many values, got {len(result.mean)} and {len(result.std)}")
    return dataclasses.replace(result, grayscale=len(result.mean) == 1)


def _ratio(r: float) -> str:
    """A compression ratio, marked where the coded maps are larger than the raw ones."""
    return f"{r:.3f}x" + (" (larger than raw)" if r < 1 else "")


def _weights_note(model: str, weights: Optional[Path]) -> tuple[str | None, str]:
    """(a line for the terminal where `model` runs with random weights, else None; the report's
    "weights" field)."""
    from . import models

    if models.has_trained_weights(model, weights):
        return None, str(weights or "shipped")
    return (f"note: {model} runs with random weights (it ships none and no --weights was given): "
            "the figures describe an untrained network"), "random (untrained)"


@app.command()
@_cli_errors
def analyze(
    model: str = typer.Option("efficientnet-lite0", help="registered name, torchvision/<arch>, or module:factory"),
    weights: Optional[Path] = typer.Option(None, help="state dict to load into the model"),
    images: Optional[str] = typer.Option(None, "--images", "--dataset",
                                         help="image folder, 'photos' (default), or 'fashion-mnist'"),
    limit: Optional[int] = typer.Option(None, help="analyze at most this many images"),
    bits: str = typer.Option("8,16", help="comma-separated bit widths, 2..16"),
    batch_size: int = typer.Option(16, help="images per forward pass"),
    calibration: str = typer.Option("max", help="'max' or 'percentile'"),
    percentile: float = typer.Option(99.99, help="percentile of |x| for --calibration percentile"),
    per_channel: bool = typer.Option(False, help="one quantizer scale per channel"),
    calibration_images: int = typer.Option(64, help="calibrate quantizers on the first N images"),
    codecs: str = typer.Option("zvc,seg,ctxrans,zstd", help="comma-separated codecs whose real streams are "
                               "measured, or 'all' (every lossless codec; slower)"),
    out_dir: Path = typer.Option(Path("runs/analyze"), "--out", help="folder for report.json/.md and plots"),
    size: Optional[int] = typer.Option(None, help="your model's input size: the short side resized to it, "
                                       "then a center crop (default: the model's own, or ImageNet's 224)"),
    mean: Optional[str] = typer.Option(None, help="per-channel mean of [0, 1] pixels, e.g. 0.5,0.5,0.5 (one "
                                       "value: grayscale)"),
    std: Optional[str] = typer.Option(None, help="per-channel std, as --mean"),
):
    """Measure a model's activation maps: zeros, zero-skipping MACs, and coded size per site."""
    from . import models
    from .analysis import AnalyzeConfig
    from .analysis import analyze as run_analysis
    from .data import open_images
    from .fileio import output_dir
    from .report import write_report

    from . import codecs as codec_suite
    from .dist import broadcast_module, init_from_env, is_main

    chosen = codec_suite.names() if codecs == "all" else [c.strip() for c in codecs.split(",") if c.strip()]
    given = locals() | {"bits": _parse_bits(bits), "codecs": tuple(chosen)}
    config = AnalyzeConfig(**{f.name: given[f.name] for f in fields(AnalyzeConfig)})
    init_from_env()  # under torchrun: the ranks share the batches and all-reduce the statistics
    preprocess = _preprocessing(models.preprocessing(model), size, mean, std)
    net = broadcast_module(models.load(model, weights=weights))
    dataset = open_images(images, preprocess)
    note, weights_field = _weights_note(model, weights)
    if note and is_main():
        err.print(note)
    bar, update = _progress()
    with output_dir(out_dir), bar:  # the folder is checked before the long run, and gone if it fails
        report = run_analysis(net, dataset, config, model_name=model, preprocess=preprocess.to_dict(),
                              progress=update if is_main() else None)
    if not is_main():
        return
    report["weights"] = weights_field
    out.print(_site_table(report))
    out.print(_codec_table(report))
    tot = report["totals"]
    out.print(f"{100 * tot['zero_fraction']:.1f} % zeros; zero-skipping speedup {tot['theoretical_speedup']:.2f}x")
    paths = write_report(report, out_dir)
    out.print("wrote " + ", ".join(str(p) for p in paths))


@app.command()
@_cli_errors
def encode(
    source: Path = typer.Argument(..., help="tensor file: .npy, .pt or .safetensors"),
    out_file: Path = typer.Option(..., "-o", "--out", help="stream file to write"),
    codec: str = typer.Option("seg", help="codec name (see `actzip codecs`)"),
    bits: int = typer.Option(8, help="quantizer bit width, 2..16"),
    per_channel: bool = typer.Option(False, help="one scale per channel (axis 1)"),
    key: Optional[str] = typer.Option(None, help="which tensor, for files that hold several"),
    param: list[str] = typer.Option([], "--param", "-p", help="codec setting key=value, e.g. -p budget=0.01"),
):
    """Quantize a float tensor and encode it into a self-describing stream."""
    from .fileio import atomic_write
    from .stream import dumps, info
    from .tensorio import read_tensor

    data = dumps(read_tensor(source, key), codec=codec, bits=bits, per_channel=per_channel, **_codec_params(param))
    atomic_write(out_file, data)
    i = info(data)
    out.print(f"{source} -> {out_file}: {i['bytes']} bytes, {i['bits_per_value']:.3f} bits/value, "
              f"{i['compression']:.2f}x vs {bits}-bit raw ({codec})")


@app.command()
@_cli_errors
def decode(
    source: Path = typer.Argument(..., help="stream file written by `actzip encode`"),
    out_file: Path = typer.Option(..., "-o", "--out", help="tensor file to write: .npy, .pt or .safetensors"),
    max_size: int = typer.Option(2**31 - 1, help="refuse streams that decode to more bytes than this"),
):
    """Decode a stream back into a float tensor (dequantized)."""
    from .stream import StreamTooLargeError, loads, output_bytes
    from .tensorio import write_tensor

    header, _ = _stream_file_header(source)  # framing and size checked before the file is read whole
    if output_bytes(header) > max_size:
        raise StreamTooLargeError(f"{source} decodes to {output_bytes(header)} bytes, more than --max-size {max_size}")
    array = loads(_read_bytes(source), max_size=max_size)
    write_tensor(out_file, array)
    out.print(f"{source} -> {out_file}: {array.dtype} {tuple(array.shape)}")


@app.command("info")
@_cli_errors
def stream_info(source: Path = typer.Argument(..., help="stream file written by `actzip encode`")):
    """Show what a stream holds, reading only its header."""
    from .stream import summarize

    i = summarize(*_stream_file_header(source))
    q = i["quant"]
    out.print(f"shape {tuple(i['shape'])} {i['dtype']}; codec {i['codec']}; {q['bits']}-bit "
              f"{'signed' if q['signed'] else 'unsigned'}, {len(q['scale'])} scale(s)")
    out.print(f"{i['bytes']} bytes, {i['bits_per_value']:.3f} bits/value, {i['compression']:.2f}x vs raw "
              "(checksum not read: `decode` verifies it)")


def _stream_file_header(path: Path) -> tuple[dict, int]:
    from .stream import read_file_header

    try:
        return read_file_header(path)
    except OSError as e:
        raise ActzipError(f"cannot read {path}: {e.strerror or e}") from None


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ActzipError(f"cannot read {path}: {e.strerror or e}") from None


@app.command("codecs")
@_cli_errors
def list_codecs():
    """List the codecs."""
    from . import codecs

    for name in codecs.names(lossy=True):
        out.print(f"{name:<8} {codecs.summary(name)}")


def _plain(value):
    """A CLI value as the config takes it: paths as strings."""
    return str(value) if isinstance(value, Path) else value


def _training_progress():
    """(a rich progress bar, the `progress` callback of `train` that drives it and prints epochs)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=err, transient=True)
    tasks = {}

    def update(phase: str, done: int, total: int, info: dict):
        if phase == "evaluated":
            out.print(f"epoch {done}/{total}: top-1 {100 * info['top1']:.2f} %, {100 * info['zeros']:.1f} % zeros")
            return
        if phase not in tasks:
            tasks[phase] = bar.add_task(phase, total=total, info="")
        bar.update(tasks[phase], completed=done, info=f"loss {info['loss']:.4f}")

    return bar, update


@app.command()
@_cli_errors
def train(
    model: str = typer.Option("resnet20", help="resnet20, resnet18, mobilenet-v1, torchvision/<arch>, module:factory"),
    dataset: str = typer.Option("fashion-mnist", help="fashion-mnist, cifar10, or a folder with train/ and val/"),
    out_dir: Path = typer.Option(Path("runs/train"), "--out", help="run directory"),
    epochs: int = typer.Option(10),
    batch_size: int = typer.Option(128),
    optimizer: str = typer.Option("sgd", help="sgd or adamw (cosine schedule either way)"),
    lr: Optional[float] = typer.Option(None, help="learning rate (default 0.05 SGD, 1e-3 AdamW)"),
    weight_decay: float = typer.Option(5e-4),
    width: Optional[float] = typer.Option(None, help="width multiplier of the small models"),
    init: Optional[Path] = typer.Option(None, help="weights or checkpoint to fine-tune from"),
    l1: float = typer.Option(0.0, help="L1 activation penalty strength"),
    l1_normalize: str = typer.Option("mean", help="L1 per site: mean |x|, sum, or macs (mean |x| weighted "
                                     "by the MACs of the layer that reads it)"),
    hoyer: float = typer.Option(0.0, help="Hoyer-square activation penalty strength"),
    fatrelu: float = typer.Option(0.0, help="FATReLU target extra sparsity, 0..1"),
    distill: float = typer.Option(0.0, help="weight of distillation from the --init model (the teacher), 0..1"),
    pixel_sparsity: float = typer.Option(0.0, help="semi-structured pixel masks on conv outputs: masked fraction"),
    pixel_criterion: str = typer.Option("random", help="which pixels to mask: random, magnitude, spread or taylor"),
    seed: int = typer.Option(0),
    data_root: Optional[Path] = typer.Option(None, help="where the dataset lives"),
    download: bool = typer.Option(False, help="allow downloading CIFAR-10"),
    eval_images: int = typer.Option(500, help="test images whose activations are measured each epoch"),
    train_limit: Optional[int] = typer.Option(None, help="use only the first N training images"),
    resume: bool = typer.Option(False, help="continue the run in --out"),
    sync_batchnorm: bool = typer.Option(False, help="under torchrun: BatchNorm over the global batch"),
    float64: bool = typer.Option(False, help="train in double precision (slower; results comparable across CPUs)"),
):
    """Train or fine-tune a model with activation sparsity; writes a run directory."""
    from .train import TrainConfig
    from .train import train as run_training

    given = locals()
    config = TrainConfig(**{f.name: _plain(given[f.name]) for f in fields(TrainConfig) if f.name in given})
    bar, update = _training_progress()
    with bar:
        report = run_training(config, out_dir, resume=resume, progress=update)
    from .dist import is_main

    if not is_main():
        return
    t = report["totals"]
    out.print(f"top-1 {100 * report['training']['top1']:.2f} %; {100 * t['zero_fraction']:.1f} % zeros; "
              f"zero-skipping speedup {t['theoretical_speedup']:.2f}x; run in {out_dir}")


@app.command()
@_cli_errors
def evaluate(
    model: str = typer.Option("efficientnet-lite0", help="registered name, torchvision/<arch>, or module:factory"),
    weights: Optional[Path] = typer.Option(None, help="state dict to load into the model"),
    images: Optional[str] = typer.Option(None, "--images", "--dataset",
                                         help="image folder, 'photos' (default), or 'fashion-mnist'"),
    codec: str = typer.Option("dctcm", help="codec name (see `actzip codecs`)"),
    bits: int = typer.Option(8, help="quantizer bit width, 2..16"),
    param: list[str] = typer.Option([], "--param", "-p",
                                    help="codec setting key=value; dctcm: budget, group, coder, keep, step"),
    budget: Optional[str] = typer.Option(
        None, help="dctcm's error budget: site:E (every site's codes within relative squared error E; "
                   "site:E:sensitivity spends that much output error where it saves most), output:E (the "
                   "model's output within E, split by sensitivity), or agreement:A (keep top-1 agreement A on "
                   "the calibration images; agreement:A:margin estimates it from the logit margins)"),
    granularity: str = typer.Option("site", help="with an output or agreement budget: one step per 'site', or "
                                    "per 'channel' by how strongly it reaches the output"),
    allow_klt: bool = typer.Option(False, "--allow-klt", help="with --granularity channel: a conv site may take a "
                                   "channel transform fitted to it (the klt codec) where that costs less"),
    output_budget: Optional[float] = typer.Option(None, hidden=True, help="older form of --budget output:E"),
    budget_by_sensitivity: bool = typer.Option(False, "--by-sensitivity", hidden=True,
                                               help="older form of --budget site:E:sensitivity"),
    agreement: Optional[float] = typer.Option(None, hidden=True, help="older form of --budget agreement:A"),
    agreement_estimate: str = typer.Option("count", hidden=True, help="older form of --budget agreement:A:margin"),
    channel_weights: bool = typer.Option(False, "--channel-weights", hidden=True,
                                         help="older form of --granularity channel"),
    transform: bool = typer.Option(False, "--transform", hidden=True, help="older form of --allow-klt"),
    calibrate_on: Optional[str] = typer.Option(
        None, help="calibrate on these images instead of the evaluated ones (same forms as --images, "
                   "e.g. fashion-mnist-train)"),
    limit: Optional[int] = typer.Option(None, help="evaluate at most this many images"),
    batch_size: int = typer.Option(16, help="images per forward pass"),
    calibration_images: int = typer.Option(64, help="calibrate quantizers (and dctcm settings) on N images"),
    out_file: Path = typer.Option(Path("runs/evaluate.json"), "--out", help="where to write the JSON report"),
):
    """Accuracy with every activation map compressed and decoded in the loop."""
    import json

    from . import models
    from .data import open_images
    from .fileio import atomic_write, output_dir
    from .lossy.config import EvaluateConfig
    from .lossy.evaluate import evaluate as run_evaluation
    from .lossy import parse_budget

    given = locals() | {"codec_params": _codec_params(param), "budget": parse_budget(budget) if budget else None}
    config = EvaluateConfig(**{f.name: given[f.name] for f in fields(EvaluateConfig)})
    net = models.load(model, weights=weights)
    dataset = open_images(images, models.preprocessing(model))
    calibration = None if calibrate_on is None else open_images(calibrate_on, models.preprocessing(model))
    bar, update = _progress()
    with output_dir(out_file.parent), bar:  # checked before the long run, and gone if it fails
        report = run_evaluation(net, dataset, config, progress=update, calibration=calibration)
        note, report["weights"] = _weights_note(model, weights)
        report["model"] = model
        atomic_write(out_file, json.dumps(report, indent=1).encode())
    _print_evaluation(report, note, out_file)


def _print_evaluation(report: dict, note: str | None, out_file: Path) -> None:
    if note:
        out.print(note)
    if report["agreement_search"]:
        found = report["agreement_search"]
        out.print(f"output budget {found['output_budget']:.3g} keeps {100 * found['calibration_agreement']:.2f} % "
                  f"agreement on {found['calibration_images']} calibration images")
    top1 = report["top1"]
    if report["labelled"]:
        out.print(f"top-1 over {report['labelled']} labelled images: float {100 * top1['float']:.2f} %, "
                  f"quantized {100 * top1['quantized']:.2f} %, compressed {100 * top1['compressed']:.2f} %")
    else:
        out.print("top-1: no labels (these images have none), so only the agreement with the float model counts")
    out.print(f"top-1 agreement with the float model over {report['images']} images: "
              f"{100 * report['agreement']['compressed']:.2f} % ({100 * report['agreement']['quantized']:.2f} % "
              f"quantized only; {100 * report['expected_agreement']['compressed']:.2f} % expected from the "
              f"margins); output error {report['output_error']['compressed']:.2e}; "
              f"compression {_ratio(report['compression'])} vs {report['bits']}-bit raw; wrote {out_file}")


@app.command()
@_cli_errors
def plot(
    reports: list[Path] = typer.Argument(..., help="JSON reports written by `actzip evaluate --out`"),
    out_file: Path = typer.Option(Path("runs/rate_distortion.png"), "--out", help="the PNG to write"),
):
    """Draw rate against agreement and output error across `actzip evaluate` runs."""
    import json

    from .report import plot_runs

    loaded = {}
    for path in reports:
        try:
            loaded[str(path)] = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ActzipError(f"cannot read {path}: {e}") from None
    if not out_file.parent.exists():
        raise ActzipError(f"the folder of --out, {out_file.parent}, does not exist")
    out.print(f"wrote {plot_runs(loaded, out_file)}")


bench = typer.Typer(no_args_is_help=True, help="Measure actzip's runtime on this machine.")
app.add_typer(bench, name="bench")


@bench.command("runtime")
@_cli_errors
def bench_runtime(
    model: str = typer.Option(..., help="registered name, torchvision/<arch>, or module:factory"),
    sparsity: Optional[float] = typer.Option(None, help="random pixel masks at this sparsity, in [0, 1) "
                                             "(leave out to time the masks saved in --weights)"),
    batch: int = typer.Option(8, help="images per forward pass"),
    size: Optional[int] = typer.Option(None, help="input height and width (default: the model's input size)"),
    weights: Optional[Path] = typer.Option(None, help="state dict to load (may carry trained pixel masks)"),
    threads: int = typer.Option(2, help="intra-op threads"),
    rounds: int = typer.Option(5, help="rounds of 3 timed runs per model"),
    torch_compile: bool = typer.Option(False, help="time torch.compile too (compiles for a minute or more)"),
    out_file: Path = typer.Option(Path("runs/bench_runtime.json"), "--out", help="where to write the JSON"),
):
    """Latency of the compiled model against the dense engines: onnxruntime, PyTorch eager, torch.compile."""
    import json

    import torch

    from . import models
    from .fileio import atomic_write, writable_dir
    from .runtime.bench import benchmark_runtime

    if batch < 1 or threads < 1 or rounds < 1:
        raise ActzipError("--batch, --threads and --rounds must be at least 1")
    writable_dir(out_file.parent)
    torch.set_num_threads(threads)
    net = models.load(model, weights=weights)
    preprocess = models.preprocessing(model)
    side = size or preprocess.crop
    first = next((m for m in net.modules() if isinstance(m, torch.nn.Conv2d)), None)
    if first is None:
        raise ActzipError(f"{model} has no Conv2d: nothing to compile")
    example = torch.randn(batch, first.in_channels, side, side, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no pixel masks" of the compiled dense reference
        result = benchmark_runtime(net, example, sparsity, rounds=rounds, torch_compile=torch_compile)
    result["model"] = model
    atomic_write(out_file, json.dumps(result, indent=1).encode())
    ms = result["ms"]
    out.print(f"{model} batch {batch} {side}x{side}, {threads} threads, pixel sparsity {result['sparsity']:.2f}: "
              f"{result['compile']['note']}")
    dense = ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items() if not k.startswith("compiled"))
    out.print(f"dense: {dense}; compiled {ms['compiled']:.1f} ms -> {result['speedup']:.2f}x over "
              f"{result['baseline']}, the fastest (of it: sparsity {result['speedup_of_sparsity']:.2f}x, "
              f"ideal conv speedup {result['ideal_conv_speedup']:.2f}x); wrote {out_file}")


@app.command("compile")
@_cli_errors
def compile_model(
    model: str = typer.Option(..., help="registered name, torchvision/<arch>, or module:factory"),
    out_file: Path = typer.Option(..., "--out", help="compiled model file to write"),
    weights: Optional[Path] = typer.Option(None, help="state dict to load (may carry trained pixel masks)"),
    sparsity: Optional[float] = typer.Option(None, help="random pixel masks at this sparsity, in [0, 1) "
                                             "(leave out to keep the masks in --weights, if any)"),
    images: Optional[str] = typer.Option(None, help="example inputs: 'photos' or an image folder (default: noise); "
                                         "real images matter where zeros in the maps are to be skipped"),
    batch: int = typer.Option(8, help="images per forward pass of the example (any batch runs later)"),
    size: Optional[int] = typer.Option(None, help="input height and width (default: the model's input size)"),
    threads: int = typer.Option(1, help="intra-op threads to measure and run with"),
):
    """Compile a model for CPU inference, choosing each conv's path by measuring, and save it:
    `actzip.runtime.load(path)` runs it in another process without the original model."""
    import torch

    from . import models
    from .fileio import writable_dir
    from .runtime import compile as compile_for, save
    from .sparsify import PixelMask, attach_pixel_masks

    if batch < 1 or threads < 1:
        raise ActzipError("--batch and --threads must be at least 1")
    writable_dir(out_file.parent)
    torch.set_num_threads(threads)
    net = models.load(model, weights=weights).eval()
    example = _example_inputs(net, model, images, batch, size)
    if sparsity is not None:
        masks = PixelMask(sparsity)  # validates it
        if sparsity > 0:
            attach_pixel_masks(net, masks, example).update(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no pixel masks": said in the summary below
        compiled = compile_for(net, example)
    save(compiled, out_file)
    out.print(f"{model}: {compiled.note}; engine {compiled.engine}; wrote {out_file}")


def _example_inputs(net, model: str, images: Optional[str], batch: int, size: Optional[int]):
    import torch

    from . import models
    from .data import open_images

    preprocess = models.preprocessing(model)
    if images is not None:
        views = open_images(images, preprocess)
        return torch.stack([views[i % len(views)][0] for i in range(batch)])
    first = next((m for m in net.modules() if isinstance(m, torch.nn.Conv2d)), None)
    if first is None:
        raise ActzipError(f"{model} has no Conv2d: nothing to compile")
    side = size or preprocess.crop
    return torch.randn(batch, first.in_channels, side, side, generator=torch.Generator().manual_seed(0))


@app.command("models")
@_cli_errors
def list_models():
    """List the models actzip can load by name."""
    from . import models
    from .models.registry import entries

    for name, e in sorted(entries().items()):
        out.print(f"{name:<22} {'weights' if e.has_weights else 'no weights':<11} {e.description}")
    tv = [n for n in models.names() if n.startswith(models.TORCHVISION_PREFIX)]
    if tv:
        out.print(f"torchvision/<arch>     no weights  {len(tv)} architectures, e.g. torchvision/resnet18")


def main():
    app()


if __name__ == "__main__":
    sys.exit(main())
