"""End-to-end latency of a compiled masked model against dense PyTorch, in one process.

Four models are timed in turns (each round runs every model `per_round` times in a row, so a
burst of load on the machine hits all of them alike, while each still runs with its own memory
warm; the median over all runs counts): dense PyTorch eager in channels_last and in contiguous
memory format (the faster is the baseline), the model compiled with every mask opened (BatchNorm
folding and activation fusion alone), and the model compiled with its masks. Two speedups follow:
over the baseline (what a user gains) and over the compiled dense model (what sparsity adds).
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn

from ..sparsify.pixelmask import PixelMask, attach_pixel_masks, mask_sparsity, remove_pixel_mask_hooks
from .compile import compile


def _timed(fn, x: torch.Tensor) -> float:
    t = time.perf_counter()
    fn(x)
    return time.perf_counter() - t


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


def benchmark_runtime(model: nn.Module, example: torch.Tensor, sparsity: float | None = None,
                      rounds: int = 5, per_round: int = 3, seed: int = 0) -> dict:
    """Latency (ms) and speedups of `model` compiled for `example`. With `sparsity`, random masks
    (the published criterion) are attached first; without, the model's own masks are used."""
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
    compiled = compile(model, example)
    compiled_dense = compile(_open_masks(model), example, verify=False) if sparsities else None
    contiguous = _unmasked(model).to(memory_format=torch.contiguous_format)
    channels_last = _unmasked(model).to(memory_format=torch.channels_last)
    x_cl = example.contiguous(memory_format=torch.channels_last)
    runs = {"dense_channels_last": (channels_last, x_cl), "dense_contiguous": (contiguous, example.contiguous()),
            "compiled": (compiled, example)}
    if compiled_dense is not None:
        runs["compiled_dense"] = (compiled_dense, example)
    times: dict[str, list[float]] = {k: [] for k in runs}
    with torch.no_grad():
        for fn, x in runs.values():
            fn(x)  # warm-up: allocator, oneDNN primitive caches
        for _ in range(rounds):
            for name, (fn, x) in runs.items():
                fn(x)
                times[name] += [_timed(fn, x) for _ in range(per_round)]
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    baseline = min(ms["dense_channels_last"], ms["dense_contiguous"])
    macs = sum(c.macs for c in compiled.layers)
    kept = sum(c.macs * (1 - (c.sparsity or 0)) for c in compiled.layers)
    return {
        "input_shape": list(example.shape), "threads": torch.get_num_threads(), "runs": rounds * per_round,
        "sparsity": statistics.fmean(sparsities.values()) if sparsities else 0.0,
        "ms": ms, "baseline": "dense_channels_last" if baseline == ms["dense_channels_last"] else "dense_contiguous",
        "speedup": baseline / ms["compiled"],
        "speedup_of_folding": baseline / ms.get("compiled_dense", ms["compiled"]),
        "speedup_of_sparsity": ms.get("compiled_dense", ms["compiled"]) / ms["compiled"],
        "ideal_conv_speedup": macs / kept if kept else None,
        "max_abs_error": compiled.max_abs_error, "compile": compiled.report(),
    }
