"""`compile(model, example)`: a model whose pixel masks become wall-clock time.

Steps: fold BatchNorm into the convs (`fold.py`), fuse each conv with the ReLU/ReLU6/Hardtanh that
alone consumes it, reorder the weights once for oneDNN, and then, for every masked conv, time the
dense and the sparse path on the conv's real input (the example run through the model) and keep
the faster. The report says, per conv, which path runs and why; the compiled model's output is
checked against the original model's on the example.

Masks and index tables are made for one input size: running another size is an error, not wrong
numbers. A model without masks still gets folded and fused, and the report says it runs dense.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..errors import ActzipError, ActzipWarning
from .conv import CHANNELS_LAST, CompiledConv2d, Workspace
from .fold import MaskedConv2d, replace_module, fold_batchnorm

_MODULE_BOUNDS = {nn.ReLU: lambda m: (0.0, float("inf")), nn.ReLU6: lambda m: (0.0, 6.0),
                  nn.Hardtanh: lambda m: (float(m.min_val), float(m.max_val))}
_FUNCTION_BOUNDS = {F.relu: (0.0, float("inf")), torch.relu: (0.0, float("inf")), F.relu6: (0.0, 6.0)}


@dataclass
class LayerChoice:
    name: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    groups: int
    input_shape: tuple[int, ...]
    macs: int  # multiply-accumulates of the dense conv over the batch
    sparsity: float | None  # masked fraction of output pixels; None: no mask
    dense_ms: float | None
    sparse_ms: float | None
    path: str
    reason: str


def _bounds(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[float, float] | None:
    """The clamp an activation node applies, or None if the node is not a fusable activation."""
    if node.op == "call_module":
        m = modules[node.target]
        rule = _MODULE_BOUNDS.get(type(m))
        return rule(m) if rule else None
    if node.op == "call_function" and node.target in _FUNCTION_BOUNDS:
        return _FUNCTION_BOUNDS[node.target]
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return 0.0, float("inf")
    return None


def _conv_inputs(gm: fx.GraphModule, example: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each MaskedConv2d's input when the example runs (first call)."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: seen.setdefault(n, a[0].detach()))
             for n, m in gm.named_modules() if isinstance(m, MaskedConv2d)]
    try:
        with torch.no_grad():
            gm(example)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _median_ms(fn, x: torch.Tensor, repeats: int) -> float:
    with torch.no_grad():
        fn(x)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t)
    return 1e3 * sorted(times)[len(times) // 2]


class CompiledModel(nn.Module):
    """The compiled graph plus its report; inputs are made channels_last on the way in."""

    def __init__(self, graph: fx.GraphModule, layers: list[LayerChoice], input_shape: tuple[int, ...], note: str):
        super().__init__()
        self.graph_module, self.layers, self.input_shape, self.note = graph, layers, input_shape, note
        self.max_abs_error: float | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph_module(x.contiguous(memory_format=CHANNELS_LAST))

    def report(self) -> dict:
        sparse = [c for c in self.layers if c.path == "sparse"]
        return {"input_shape": list(self.input_shape), "note": self.note, "convs": len(self.layers),
                "sparse_convs": len(sparse), "max_abs_error": self.max_abs_error,
                "layers": [asdict(c) for c in self.layers]}

    def summary(self) -> str:
        lines = [self.note, f"{'conv':<34} {'kernel':>6} {'s':>5} {'dense ms':>9} {'sparse ms':>9}  path    why"]
        for c in self.layers:
            s = f"{c.sparsity:.2f}" if c.sparsity is not None else "-"
            d = f"{c.dense_ms:.3f}" if c.dense_ms is not None else "-"
            sp = f"{c.sparse_ms:.3f}" if c.sparse_ms is not None else "-"
            lines.append(f"{c.name:<34} {c.kernel[0]}x{c.kernel[1]:<4} {s:>5} {d:>9} {sp:>9}  {c.path:<7} {c.reason}")
        return "\n".join(lines)


def compile(model: nn.Module, example: torch.Tensor, repeats: int = 5, verify: bool = True) -> CompiledModel:
    """`model` (pixel masks from `actzip.sparsify.pixelmask`, or none) compiled for inputs shaped like
    `example`; each masked conv runs its faster path, measured here with `repeats` runs."""
    example = example.contiguous(memory_format=CHANNELS_LAST)
    model = model.eval()
    gm = fold_batchnorm(model)
    inputs = _conv_inputs(gm, example)
    modules = dict(gm.named_modules())
    workspace = Workspace()
    layers: list[LayerChoice] = []
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), MaskedConv2d):
            continue
        conv = modules[node.target]
        if node.target not in inputs:
            continue  # never called on the example: left as it is
        users = list(node.users)
        bounds = _bounds(users[0], modules) if len(users) == 1 else None
        try:
            fast = CompiledConv2d(conv, bounds, tuple(inputs[node.target].shape), workspace)
        except ValueError as e:
            layers.append(LayerChoice(node.target, conv.kernel_size, conv.stride, conv.groups,
                                      tuple(inputs[node.target].shape), 0, None, None, None, "as is", str(e)))
            continue
        replace_module(gm, node.target, fast)
        if bounds is not None:
            users[0].replace_all_uses_with(node)
            gm.graph.erase_node(users[0])
        layers.append(_choose(node.target, fast, inputs[node.target].contiguous(memory_format=CHANNELS_LAST),
                              repeats))
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    _hand_over_kept_rows(gm, {c.name: c for c in layers})
    masked = [c for c in layers if c.sparsity is not None]
    if not masked:
        note = "no pixel masks in this model: every conv runs dense (BatchNorm folded, activations fused)"
        warnings.warn(note, ActzipWarning, stacklevel=2)
    else:
        sparse = sum(c.path == "sparse" for c in layers)
        note = f"{sparse} of {len(masked)} masked convs run sparse ({len(layers)} convs in all)"
    compiled = CompiledModel(gm, layers, tuple(example.shape), note)
    if verify:
        with torch.no_grad():
            want, got = model(example), compiled(example)
        compiled.max_abs_error = float((got - want).abs().max())
        if compiled.max_abs_error > 1e-3 * float(want.abs().max()) + 1e-5:
            raise ActzipError(f"the compiled model differs from the model by {compiled.max_abs_error:.3g}: "
                              "please report this with the model")
    return compiled


def _hand_over_kept_rows(gm: fx.GraphModule, choices: dict[str, LayerChoice]) -> None:
    """Mark each masked conv whose only consumer is a sparse 1x1 conv with the same mask: that
    consumer reads the kept pixels alone, so the producer skips the masked ones (see conv.py)."""
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        producer = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(producer, CompiledConv2d) or not producer.masked or len(node.users) != 1:
            continue
        user = next(iter(node.users))
        consumer = modules.get(user.target) if user.op == "call_module" else None
        if (isinstance(consumer, CompiledConv2d) and consumer.masked and consumer.path == "sparse"
                and consumer.kernel_size == (1, 1) and consumer.stride == (1, 1) and consumer.pads == (0, 0, 0, 0)
                and consumer.input_hw == producer.output_hw and user.args[0] is node
                and torch.equal(consumer.kept_pixels, producer.kept_pixels)):
            producer.feeds_kept_only = True
            choices[node.target].reason += f"; hands its kept pixels alone to {user.target}"


def _choose(name: str, conv: CompiledConv2d, x: torch.Tensor, repeats: int) -> LayerChoice:
    def choice(path, reason, dense_ms=None, sparse_ms=None):
        conv.path = path
        return LayerChoice(name, conv.kernel_size, conv.stride, conv.groups, tuple(x.shape), conv.macs(x.shape[0]),
                           conv.sparsity if conv.masked else None, dense_ms, sparse_ms, path, reason)

    if not conv.masked:
        return choice("dense", "no mask")
    if not conv.sparse_capable:
        return choice("dense", "grouped/depthwise: oneDNN's dense kernel beats any kept-pixel kernel here")
    if conv.sparsity == 0:
        return choice("dense", "mask keeps every pixel")
    dense_ms = _median_ms(conv.dense, x, repeats)
    sparse_ms = _median_ms(conv.sparse, x, repeats)
    if sparse_ms < dense_ms:
        return choice("sparse", f"measured {dense_ms / sparse_ms:.2f}x faster", dense_ms, sparse_ms)
    return choice("dense", f"sparse measured {dense_ms / sparse_ms:.2f}x", dense_ms, sparse_ms)
