"""End-to-end latency of a compiled model against the dense engines a user would run instead.

The engines are timed in turns in one process (`compile.time_in_turns`: each round runs every
engine `per_round` times in a row, so a burst of load on the machine hits all of them alike, while
each still runs with its own memory warm; the median over all runs counts). Between engines the
process idles: an engine's idle worker threads (libgomp's, onnxruntime's) spin for milliseconds
after a run, and on a 2-core machine they took the cores from the next engine (a compiled model
timed right after onnxruntime ran at half the speed of the same graph timed after itself). The
engines are:
onnxruntime on the exported dense model (all graph optimizations, the same thread count), PyTorch
eager in channels_last and in contiguous memory format, torch.compile when asked for, the model
compiled with every mask opened (folding and fusion alone), and the compiled model. The speedup is over the fastest dense engine, which is onnxruntime
wherever it is installed; the report also gives it over each engine.
"""

from __future__ import annotations

import copy
import statistics

import torch
from torch import nn

from ..sparsify.pixelmask import PixelMask, attach_pixel_masks, mask_sparsity, remove_pixel_mask_hooks
from .compile import compile, time_in_turns
from .onnx import onnxruntime_session


def _open_masks(model: nn.Module) -> nn.Module:
    """A copy whose masks keep every pixel: compiled, it is the dense model folded and fused."""
    dense = copy.deepcopy(model)
    for m in dense.modules():
        if hasattr(m, "pixel_mask"):
            m.pixel_mask.fill_(1)
    return dense


def _unmasked(model: nn.Module) -> nn.Module:
    """A copy without the masking hooks: the plain dense model a user would run."""
    dense = copy.deepcopy(model)
    remove_pixel_mask_hooks(dense)
    return dense


def _dense_engines(model: nn.Module, example: torch.Tensor, torch_compile: bool) -> dict:
    """name: (function, its input) for every dense engine there is here."""
    contiguous = _unmasked(model).to(memory_format=torch.contiguous_format)
    channels_last = _unmasked(model).to(memory_format=torch.channels_last)
    x_cl = example.contiguous(memory_format=torch.channels_last)
    engines = {"eager_channels_last": (channels_last, x_cl), "eager_contiguous": (contiguous, example.contiguous())}
    session = onnxruntime_session(_unmasked(model), example)
    if session is not None:
        engines["onnxruntime"] = (session, example.contiguous())
    if torch_compile:
        engines["torch_compile"] = (torch.compile(channels_last), x_cl)
    return engines


def benchmark_runtime(model: nn.Module, example: torch.Tensor, sparsity: float | None = None,
                      rounds: int = 5, per_round: int = 3, seed: int = 0, torch_compile: bool = False,
                      engines: tuple[str, ...] = ("actzip", "onnxruntime")) -> dict:
    """Latency (ms) and speedups of `model` compiled for `example` (with `engines`, see `compile`).
    With `sparsity`, random masks (the published criterion) are attached first (0: none, the zeros
    in the maps alone); without, the model's own masks are used."""
    model = copy.deepcopy(model).eval()
    if sparsity is not None:
        config = PixelMask(sparsity, seed=seed)  # validates the sparsity
        if mask_sparsity(model):
            raise ValueError("the model already carries pixel masks: leave out the sparsity to time them")
        if sparsity > 0:
            attach_pixel_masks(model, config, example).update(1.0)
    elif not mask_sparsity(model):
        raise ValueError("the model carries no pixel masks: give a sparsity to time random masks")
    sparsities = mask_sparsity(model)
    compiled = compile(model, example, engines=engines)
    runs = _dense_engines(model, example, torch_compile)
    if sparsities:
        runs["compiled_dense"] = (compile(_open_masks(model), example, verify=False, engines=engines), example)
    runs["compiled"] = (compiled, example)
    # actzip's own graph, also where the whole-model choice handed the model to onnxruntime
    runs["actzip_graph"] = (lambda x: compiled.graph_module(x.contiguous(memory_format=torch.channels_last)), example)
    with torch.no_grad():
        for fn, x in runs.values():
            fn(x)  # warm-up: allocator, oneDNN primitive caches, torch.compile's compilation
        times = time_in_turns({name: lambda fn=fn, x=x: fn(x) for name, (fn, x) in runs.items()}, rounds, per_round)
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    dense = {k: ms[k] for k in runs if not k.startswith("compiled") and k != "actzip_graph"}
    baseline = min(dense, key=dense.get)
    macs = sum(c.macs for c in compiled.layers)
    kept = sum(c.macs * (1 - (c.sparsity or 0)) for c in compiled.layers)
    return {
        "input_shape": list(example.shape), "threads": torch.get_num_threads(), "runs": rounds * per_round,
        "sparsity": statistics.fmean(sparsities.values()) if sparsities else 0.0,
        "ms": ms, "baseline": baseline, "speedup": ms[baseline] / ms["compiled"],
        "speedup_over": {k: v / ms["compiled"] for k, v in dense.items()},
        "engine": compiled.engine, "actzip_graph_speedup": ms[baseline] / ms["actzip_graph"],
        "speedup_of_folding": ms[baseline] / ms.get("compiled_dense", ms["compiled"]),
        "speedup_of_sparsity": ms.get("compiled_dense", ms["compiled"]) / ms["compiled"],
        "ideal_conv_speedup": macs / kept if kept else None,
        "max_abs_error": compiled.max_abs_error, "compile": compiled.report(),
    }
