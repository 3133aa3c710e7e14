"""`compile(model, example)`: a model whose pixel masks become wall-clock time.

Steps: fold BatchNorm into the convs (`fold.py`); fuse each conv with the ReLU/ReLU6/Hardtanh that
alone consumes it, or with the residual add (and the activation after it) that alone consumes it;
reorder the weights once for oneDNN; then, for every masked conv, time the dense and the sparse
path inside the model running the example, and keep the faster. (Timing a conv alone on its input
misleads: alone, it reuses memory that is warm and already mapped, while in the model a sparse
path's extra tensors cost page faults and cache misses; MobileNetV2's first expand conv measured
1.3x faster alone and 2x slower in the model.) The report says, per conv, which path runs and why;
the compiled model's output is checked against the original model's on the example.

Masks and index tables are made for one input size: running another size is an error, not wrong
numbers. A model without masks still gets folded and fused, and the report says it runs dense.

With `hold_memory` (the default), glibc is told to keep freed memory in the process
(`memory.hold_freed_memory`): a steady-state forward then maps no fresh pages, as onnxruntime's arena
does. It is process-wide and keeps the peak memory; pass `hold_memory=False` to leave malloc alone.
"""

from __future__ import annotations

import operator
import statistics
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, NamedTuple

import torch
import torch.fx as fx
from torch.fx.passes.shape_prop import ShapeProp
import torch.nn.functional as F
from torch import nn

from ..errors import ActzipError, ActzipWarning
from .conv import CHANNELS_LAST, DIRECT_ZEROS_PATH, KEPT_PATHS, TAPS_ZEROS_PATH, ZEROS_PATHS, CompiledConv2d, Workspace
from .fold import MaskedConv2d, replace_module, fold_batchnorm
from . import native, onnx, prefix
from .memory import hold_freed_memory
from .pool import CompiledMaxPool2d

_MODULE_BOUNDS = {nn.ReLU: lambda m: (0.0, float("inf")), nn.ReLU6: lambda m: (0.0, 6.0),
                  nn.Hardtanh: lambda m: (float(m.min_val), float(m.max_val))}
_ADDS = (operator.add, operator.iadd, torch.add)
_FUNCTION_BOUNDS = {F.relu: (0.0, float("inf")), torch.relu: (0.0, float("inf")), F.relu6: (0.0, 6.0)}
ENGINES = ("actzip", "onnxruntime")
IDLE_GAP = 0.05  # seconds between engines timed in turns: idle worker threads spin for milliseconds
# Timed runs of each engine per round of `choose_engine`: the lone run after each idle gap, timed
# alone, found cold caches; it measured the L1 MobileNet v1 (9 ms) 1.05-1.1x faster in actzip
# instead of about 1.15x, and handed it to onnxruntime once in six compiles.
ENGINE_RUNS_PER_ROUND = 3
# A 1x1 conv whose example input has fewer zeros than this is not timed on the zeros path: the
# kernel breaks even near 55 % zeros on correlated maps.
ZEROS_WORTH_TIMING = 0.3
# A conv with taps whose im2col rows would take more bytes than this is not timed on "zeros-taps":
# the workspace would hold them for good, and the gather over 9x the input lost on the large maps
# measured (the L1 resnet20's 28x28 convs, 29 MB at batch 64: 0.24-0.30x dense)
TAPS_ZEROS_BYTES = 16 << 20


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
    sparse_ms: float | None  # its faster other path: kept pixels only, or skipping zeros
    path: str  # "dense", "sparse" (kept output pixels only), "zeros" (skips the zero channels of tiles of
    # pixels), "zeros-pixel" (skips each pixel's own zero channels), "kernel" (an unmasked conv by
    # actzip's kept-pixel kernels, every pixel kept), "kernel-zeros" (that, skipping zeros pixel by pixel),
    # "zeros-taps" (a conv with taps skipping the zeros of its im2col rows), "zeros-3x3" (a narrow 3x3
    # conv skipping its input's zeros directly)
    # or "onnxruntime" (in the prefix of the model that onnxruntime runs, see prefix.py)
    reason: str
    input_zeros: float | None = None  # fraction of zeros in the example's input, where it was looked at


def time_in_turns(runs: dict[str, Callable[[], object]], rounds: int, per_round: int) -> dict[str, list[float]]:
    """Seconds per call of each of `runs`, timed in turns: in each round each one idles IDLE_GAP
    (an engine's idle workers spin, and took the cores from the next), runs once untimed (the idle
    left its caches cold), then `per_round` times in a row, each timed."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            time.sleep(IDLE_GAP)
            run()
            for _ in range(per_round):
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    return times


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


def _shape(node) -> tuple[int, ...] | None:
    """The shape of a node's tensor when the example ran (`ShapeProp`), or None."""
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _residual_add(node: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """(add node, the other addend) when the conv `node` feeds nothing but an add of a tensor of
    its own shape: the conv can do that add itself."""
    users = list(node.users)
    if len(users) != 1 or users[0].op != "call_function" or users[0].target not in _ADDS or users[0].kwargs:
        return None
    add = users[0]
    if len(add.args) != 2 or add.args.count(node) != 1:
        return None
    other = add.args[1] if add.args[0] is node else add.args[0]
    return (add, other) if _shape(other) is not None and _shape(other) == _shape(node) else None


class Timings(NamedTuple):
    """One conv's median ms inside whole runs of the model (`_time_in_model`)."""

    paths: dict[str, float]  # per path, dense first, each on the conv's own side
    sides: list[float]  # per side from 0, whatever path the conv ran there


def _path_on(conv: CompiledConv2d, side: int) -> str:
    """The path `conv` runs on `side` of `_time_in_model`: dense on side -1, else its side-th
    alternative, or its last."""
    return "dense" if side < 0 else conv.alternatives[min(side, len(conv.alternatives) - 1)]


def _time_in_model(gm: fx.GraphModule, convs: dict[str, CompiledConv2d], example: torch.Tensor,
                   repeats: int, pairs: list[tuple[str, str]]) -> dict[str, Timings]:
    """Each conv of `convs` timed inside whole runs of the model, with every conv of `convs` on the
    same side (the runs alternate between the sides; side i runs each conv's `_path_on` i, its
    time on that path recorded on its own side only), and the hand-over `pairs` on where they
    apply. On side 0 every conv runs the kept-pixel kernels, so a fused chain is timed whole; its
    other kept sides (a 1x1 conv skipping zeros on every pixel) are timed whole per side."""
    modules = dict(gm.named_modules())
    times = {name: {path: [] for path in ("dense",) + conv.alternatives} for name, conv in convs.items()}
    sides = max(len(conv.alternatives) for conv in convs.values())
    by_side = {name: [[] for _ in range(sides)] for name in convs}
    started: dict[str, float] = {}
    side = -1  # the side the runs are on, read by `timed`

    def timed(m, args, out, name):
        elapsed = time.perf_counter() - started[name]
        if side < len(m.alternatives):  # its own side
            times[name][m.path].append(elapsed)
        if side >= 0:
            by_side[name][side].append(elapsed)

    hooks = []
    for name, conv in convs.items():
        hooks.append(conv.register_forward_pre_hook(lambda m, a, n=name: started.__setitem__(n, time.perf_counter())))
        hooks.append(conv.register_forward_hook(lambda m, a, out, n=name: timed(m, a, out, n)))
    try:
        with torch.no_grad():
            for r in range(repeats + 1):  # the first round warms every path up and is dropped
                for side in range(-1, sides):
                    for conv in convs.values():
                        conv.path = _path_on(conv, side)
                    _hand_over(modules, pairs)
                    gm(example)
                if r == 0:
                    for v in [v for t in times.values() for v in t.values()] + [v for t in by_side.values() for v in t]:
                        v.clear()
    finally:
        for h in hooks:
            h.remove()
    median = lambda v: 1e3 * sorted(v)[len(v) // 2]  # noqa: E731
    return {name: Timings({path: median(v) for path, v in t.items()}, [median(v) for v in by_side[name]])
            for name, t in times.items()}


def _input_zeros(gm: fx.GraphModule, convs: dict[str, CompiledConv2d], example: torch.Tensor) -> dict[str, float]:
    """The fraction of zeros in each conv's input when the model runs the example."""
    zeros = {}
    hooks = [conv.register_forward_pre_hook(lambda m, a, n=name: zeros.__setitem__(n, float((a[0] == 0).float().mean())))
             for name, conv in convs.items()]
    try:
        with torch.no_grad():
            gm(example)
    finally:
        for h in hooks:
            h.remove()
    return zeros


def call_submodules_directly(gm: fx.GraphModule) -> None:
    """Run `gm` through code that holds each submodule it calls. FX's own code reaches a submodule
    through a chain of getattr, and each level costs about 0.5 us in Module.__getattr__: 3 us per
    conv of torchvision's MobileNetV2, 4 % of its batch-1 forward. The graph and the modules stay as
    they are (each is still called as a module, so its hooks run); change the graph and call this
    again."""
    graph, new = fx.Graph(), {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            new[node] = graph.call_function(_caller(gm.get_submodule(node.target), node.target),
                                            fx.map_arg(node.args, new.__getitem__), fx.map_arg(node.kwargs, new.__getitem__))
        else:
            new[node] = graph.node_copy(node, new.__getitem__)
    gm.forward = fx.GraphModule(gm, graph).forward


def _caller(module: nn.Module, name: str) -> Callable:
    """A function that calls `module` (a plain function, so that FX's code holds it as it is)."""
    def call(*args, **kwargs):
        return module(*args, **kwargs)
    call.__name__ = name.replace(".", "_")
    return call


class CompiledModel(nn.Module):
    """The compiled graph plus its report; inputs are made channels_last on the way in. `engine` is
    "actzip" (the graph) or "onnxruntime" (the same masked model, when it measured faster)."""

    def __init__(self, graph: fx.GraphModule, layers: list[LayerChoice], input_shape: tuple[int, ...], note: str):
        super().__init__()
        call_submodules_directly(graph)
        self.graph_module, self.layers, self.input_shape, self.note = graph, layers, input_shape, note
        self.max_abs_error: float | None = None
        self.engine, self.engine_ms, self.onnxruntime = "actzip", {}, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # checked here for every engine: onnxruntime (the whole model, or a prefix of the graph)
        # would fail on its own terms
        if tuple(x.shape[1:]) != self.input_shape[1:]:
            raise ValueError(f"this model was compiled for {self.input_shape[2]}x{self.input_shape[3]} inputs, "
                             f"got {x.shape[-2]}x{x.shape[-1]}: compile the model for this input size")
        if self.engine == "onnxruntime":
            return torch.from_numpy(self.onnxruntime(x))
        return self.graph_module(x.contiguous(memory_format=CHANNELS_LAST))

    def choose_engine(self, session, example: torch.Tensor, repeats: int) -> None:
        """Time the graph and onnxruntime's `session` on the example in turns (`time_in_turns`, with
        `repeats` rounds); keep the faster."""
        runs = {"actzip": lambda: self.graph_module(example), "onnxruntime": lambda: session(example)}
        with torch.no_grad():
            times = time_in_turns(runs, repeats, ENGINE_RUNS_PER_ROUND)
        self.engine_ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        self.onnxruntime = session
        if self.engine_ms["onnxruntime"] < self.engine_ms["actzip"]:
            self.engine = "onnxruntime"
            self.note += (f"; onnxruntime runs the whole model ({self.engine_ms['onnxruntime']:.2f} ms against "
                          f"{self.engine_ms['actzip']:.2f} ms for actzip's graph)")

    def choose_prefix(self, folded: fx.GraphModule, example: torch.Tensor, repeats: int) -> None:
        """Run the model's first layers in onnxruntime where that measures faster (see prefix.py):
        the best prefix found, then the whole forward with and without it timed in turns."""
        found = prefix.best_prefix(self.graph_module, folded, example, repeats)
        if found is None:
            return
        cut, module, graph_ms, ort_ms = found
        hybrid = prefix.with_prefix(self.graph_module, cut, module)
        call_submodules_directly(hybrid)
        with torch.no_grad():
            out = hybrid(example)
        if isinstance(out, torch.Tensor) and out.untyped_storage().data_ptr() == module.out.untyped_storage().data_ptr():
            return  # the output would be the prefix's buffer, which the next forward overwrites
        runs = {"graph": lambda: self.graph_module(example), "prefix": lambda: hybrid(example)}
        with torch.no_grad():
            times = {k: 1e3 * statistics.median(v) for k, v in time_in_turns(runs, repeats, ENGINE_RUNS_PER_ROUND).items()}
        if times["prefix"] < times["graph"]:
            self.use_prefix(hybrid, f"in onnxruntime's prefix up to {cut.target}: {ort_ms:.2f} ms against "
                                    f"{graph_ms:.2f} ms in actzip")
            self.note += (f"; onnxruntime runs the layers up to {cut.target} ({times['prefix']:.2f} ms a forward "
                          f"against {times['graph']:.2f} ms without)")

    def use_prefix(self, hybrid: fx.GraphModule, reason: str) -> None:
        """Run `hybrid` (`prefix.with_prefix` of this graph): the convs it no longer calls say why."""
        kept = {n.target for n in hybrid.graph.nodes if n.op == "call_module"}
        for layer in self.layers:
            if layer.name not in kept:
                layer.path, layer.reason = "onnxruntime", reason
        call_submodules_directly(hybrid)
        self.graph_module = hybrid

    def report(self) -> dict:
        sparse = [c for c in self.layers if c.path == "sparse"]
        return {"input_shape": list(self.input_shape), "note": self.note, "convs": len(self.layers),
                "sparse_convs": len(sparse), "max_abs_error": self.max_abs_error, "engine": self.engine,
                "engine_ms": self.engine_ms, "layers": [asdict(c) for c in self.layers]}

    def summary(self) -> str:
        lines = [self.note, f"{'conv':<34} {'kernel':>6} {'s':>5} {'dense ms':>9} {'sparse ms':>9}  {'path':<11} why"]
        for c in self.layers:
            s = f"{c.sparsity:.2f}" if c.sparsity is not None else "-"
            d = f"{c.dense_ms:.3f}" if c.dense_ms is not None else "-"
            sp = f"{c.sparse_ms:.3f}" if c.sparse_ms is not None else "-"
            lines.append(f"{c.name:<34} {c.kernel[0]}x{c.kernel[1]:<4} {s:>5} {d:>9} {sp:>9}  {c.path:<11} {c.reason}")
        return "\n".join(lines)


def compile(model: nn.Module, example: torch.Tensor, repeats: int = 5, verify: bool = True,
            hold_memory: bool = True, engines: tuple[str, ...] = ENGINES) -> CompiledModel:
    """`model` (pixel masks from `actzip.sparsify.pixelmask`, or none) compiled for inputs shaped like
    `example`; each masked conv, and each 1x1 conv whose input has zeros, runs its faster path,
    measured here with `repeats` runs. With "onnxruntime" in `engines` (and onnxruntime installed),
    the whole masked model also runs in onnxruntime, and the faster of the two engines on the example
    is kept (`CompiledModel.engine`). `hold_memory`: see the module doc."""
    unknown = set(engines) - set(ENGINES)
    if unknown or "actzip" not in engines:
        raise ValueError(f"engines are {ENGINES}, actzip's own always among them; got {engines}")
    if hold_memory:
        hold_freed_memory()
    native.warn_if_missing()
    example = example.contiguous(memory_format=CHANNELS_LAST)
    model = model.eval()
    gm, order, input_shapes, left_as_is = _fused_graph(model, example)
    modules = dict(gm.named_modules())
    compiled = {name: modules[name] for name in order if name not in left_as_is}
    zeros = _input_zeros(gm, {n: c for n, c in compiled.items() if c.zeros_capable or c.taps_zeros_capable}, example)
    candidates = {}
    for name, conv in compiled.items():
        conv.alternatives = _alternatives(conv, zeros.get(name, 0))
        if conv.alternatives:
            candidates[name] = conv
    pairs = _hand_over_pairs(gm)
    timed = _time_in_model(gm, candidates, example, repeats, pairs) if candidates else {}
    chains = _chains(pairs, set(timed))
    layers = [left_as_is.get(name) or _choose(name, modules[name], input_shapes[name], timed.get(name),
                                              zeros.get(name), [(modules[n], timed[n]) for n in chains.get(name, [])])
              for name in order]
    choices = {c.name: c for c in layers}
    for producer, consumer in _hand_over(modules, pairs):
        choices[producer].reason += f"; hands its kept pixels alone to {consumer}"
    result = CompiledModel(gm, layers, tuple(example.shape), _note(layers))
    if "onnxruntime" in engines and onnx.available():
        folded = fold_batchnorm(model)
        result.choose_prefix(folded, example, repeats)
        # onnxruntime's defaults, spinning workers included: where it wins, it runs the whole model as
        # it would for a user (at 2 threads, sleeping workers made it 10-20 % slower on small models)
        result.choose_engine(onnx.onnxruntime_session(folded, example), example, repeats)
    if verify:
        with torch.no_grad():
            want, got = model(example), result(example)
        result.max_abs_error = float((got - want).abs().max())
        if result.max_abs_error > 1e-3 * float(want.abs().max()) + 1e-5:
            raise ActzipError(f"the compiled model differs from the model by {result.max_abs_error:.3g}: "
                              "please report this with the model")
    return result


def _fused_graph(model: nn.Module, example: torch.Tensor):
    """(graph, conv names in order, their input shapes, convs left as they are): `model` traced with
    BatchNorm folded, each conv a CompiledConv2d that does the activation or residual add after it."""
    gm = fold_batchnorm(model)
    with torch.no_grad():
        ShapeProp(gm).propagate(example)
    modules = dict(gm.named_modules())
    workspace = Workspace()
    order, input_shapes, left_as_is = [], {}, {}
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), MaskedConv2d):
            continue
        conv = modules[node.target]
        order.append(node.target)
        input_shapes[node.target] = _shape(node.args[0])
        try:
            _fuse(gm, node, conv, modules, workspace, input_shapes[node.target])
        except ValueError as e:
            left_as_is[node.target] = LayerChoice(node.target, conv.kernel_size, conv.stride, conv.groups,
                                                  input_shapes[node.target], 0, None, None, None, "as is", str(e))
    _compile_pools(gm, modules)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm, order, input_shapes, left_as_is


def _compile_pools(gm: fx.GraphModule, modules: dict[str, nn.Module]) -> None:
    """Every nn.MaxPool2d of the graph as a CompiledMaxPool2d (the same pooling, by the kernel)."""
    for node in gm.graph.nodes:
        pool = modules.get(node.target) if node.op == "call_module" else None
        if type(pool) is nn.MaxPool2d:
            replace_module(gm, node.target, CompiledMaxPool2d(pool.kernel_size, pool.stride, pool.padding,
                                                              pool.dilation, pool.return_indices, pool.ceil_mode))


def _fuse(gm: fx.GraphModule, node: fx.Node, conv: MaskedConv2d, modules: dict, workspace: Workspace,
          input_shape: tuple[int, ...]) -> None:
    """Replace `conv` by a CompiledConv2d that also does the activation, or the residual add and the
    activation, that alone consume it; ValueError where it cannot be compiled."""
    users = list(node.users)
    bounds = _bounds(users[0], modules) if len(users) == 1 else None
    residual = _residual_add(node) if bounds is None else None
    if residual is not None:  # conv -> add [-> activation]
        after = list(residual[0].users)
        bounds = _bounds(after[0], modules) if len(after) == 1 else None
    fast = CompiledConv2d(conv, bounds, input_shape, workspace, residual is not None)
    replace_module(gm, node.target, fast)
    fused = []  # the nodes whose work the conv now does, last first
    if residual is not None:
        add, other = residual
        add.prepend(node)  # the conv moves down to the add, where `other` has been computed
        node.args = (node.args[0], other)
        fused = [after[0], add] if bounds is not None else [add]
    elif bounds is not None:
        fused = [users[0]]
    if fused:
        node.meta["stands_for"] = fused[0].name  # the folded model's tensor it now computes (prefix.py)
        fused[0].replace_all_uses_with(node)
        for n in fused:
            gm.graph.erase_node(n)


def _note(layers: list[LayerChoice]) -> str:
    """One line on what the compiled convs do; warns where there is nothing sparse to run."""
    masked = [c for c in layers if c.sparsity is not None]
    on_zeros = sum("zeros" in c.path for c in layers)
    on_kernel = sum(c.path.startswith("kernel") for c in layers)
    zeros_note = (f"; {on_zeros} convs skip their input's zeros" if on_zeros else "") \
        + (f"; {on_kernel} convs run actzip's kernels" if on_kernel else "")
    if masked:
        sparse = sum(c.path == "sparse" for c in layers)
        return f"{sparse} of {len(masked)} masked convs run sparse ({len(layers)} convs in all){zeros_note}"
    note = "no pixel masks in this model: BatchNorm folded, activations fused"
    if not zeros_note:
        warnings.warn(note, ActzipWarning, stacklevel=3)
    return note + zeros_note


def _hand_over_pairs(gm: fx.GraphModule) -> list[tuple[str, str]]:
    """(producer, consumer) for each masked conv whose only consumer can read its kept pixels alone
    when that consumer runs sparse, so that the producer may skip the masked ones (see conv.py): a 1x1
    conv with the same mask, or a depthwise conv, which reads the producer's masked pixels as its
    masked value."""
    modules, pairs = dict(gm.named_modules()), []
    for node in gm.graph.nodes:
        producer = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(producer, CompiledConv2d) or not (producer.masked or producer.every_pixel) \
                or producer.residual or len(node.users) != 1:
            continue
        user = next(iter(node.users))
        consumer = modules.get(user.target) if user.op == "call_module" else None
        if not (isinstance(consumer, CompiledConv2d) and (consumer.masked and consumer.sparse_capable or consumer.every_pixel)
                and consumer.input_hw == producer.output_hw and user.args[0] is node):
            continue
        pointwise = consumer.kernel_size == (1, 1) and consumer.stride == (1, 1) and consumer.pads == (0, 0, 0, 0)
        if consumer.depthwise and consumer.native or pointwise and not consumer.depthwise \
                and torch.equal(consumer.kept_pixels, producer.kept_pixels):
            pairs.append((node.target, user.target))
    return pairs


def _hand_over(modules: dict[str, nn.Module], pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Switch the hand-over of each pair on where its consumer runs sparse, off elsewhere; fuse a
    sparse producer into its sparse depthwise consumer where the compiled kernel can, and such a
    depthwise conv into its sparse 1x1 consumer, unless that one is fused into a depthwise conv
    after it (MobileNet v1's chains); the pairs switched on."""
    on = []
    for _, consumer_name in pairs:  # undone first: a depthwise conv fused onwards keeps its producer
        modules[consumer_name].fuse_depthwise(None)
    for producer_name, consumer_name in pairs:
        producer, consumer = modules[producer_name], modules[consumer_name]
        sparse = consumer.path in KEPT_PATHS
        producer.feeds_kept_only = sparse
        if consumer.depthwise:
            consumer.read_masked_input(producer.kept_pixels if sparse else None, producer.fill if sparse else None)
            fusable = sparse and producer.path in KEPT_PATHS and producer.native and not producer.depthwise
            consumer.fuse_producer(producer if fusable else None)
        if sparse:
            on.append((producer_name, consumer_name))
    for producer_name, consumer_name in pairs:  # once every fused producer is known
        producer, consumer = modules[producer_name], modules[consumer_name]
        if producer.depthwise and producer.native:  # the depthwise -> 1x1 pair of an inverted residual block
            fusable = consumer.path in KEPT_PATHS and producer.path in KEPT_PATHS and consumer.fuses(producer)
            consumer.fuse_depthwise(producer if fusable else None)
    return on


def link_kept_rows(gm: fx.GraphModule) -> None:
    """Hand kept rows over between the convs of a compiled graph as their paths allow (what
    `compile` does after choosing them, and `load` after reading them)."""
    _hand_over(dict(gm.named_modules()), _hand_over_pairs(gm))


def _chains(pairs: list[tuple[str, str]], names: set[str]) -> dict[str, list[str]]:
    """For each conv of `names` linked by hand-over pairs to others of `names`, its whole chain."""
    chain_of: dict[str, list[str]] = {}
    for producer, consumer in pairs:
        if producer in names and consumer in names:
            first, second = chain_of.get(producer, [producer]), chain_of.get(consumer, [consumer])
            if first is not second:
                for name in (joined := first + second):
                    chain_of[name] = joined
    return chain_of


def _zeros_paths() -> tuple[str, ...]:
    """The zeros kernels worth timing here: the pixel-by-pixel one runs the tiles without AVX-512."""
    return ZEROS_PATHS if native.isa() == "avx512" else ZEROS_PATHS[:1]


def _sparse_candidate(conv: CompiledConv2d) -> bool:
    """A mask that keeps every pixel still counts: the kept-pixel kernels fuse whole blocks."""
    return conv.masked and conv.sparse_capable


def _alternatives(conv: CompiledConv2d, zeros: float) -> tuple[str, ...]:
    """The paths to time against dense: its kept pixels, or actzip's kernels on every pixel of an
    unmasked conv, and the zeros kernels where its input has zeros enough to try."""
    if _sparse_candidate(conv):
        return ("sparse",)
    if conv.direct_zeros_capable and zeros >= ZEROS_WORTH_TIMING:
        return ("kernel", DIRECT_ZEROS_PATH) if conv.every_pixel else (DIRECT_ZEROS_PATH,)
    if conv.taps_zeros_capable and zeros >= ZEROS_WORTH_TIMING and conv.cols_bytes(conv.batch) <= TAPS_ZEROS_BYTES:
        return ("kernel", TAPS_ZEROS_PATH) if conv.every_pixel else (TAPS_ZEROS_PATH,)
    if not (conv.zeros_capable and zeros >= ZEROS_WORTH_TIMING):
        return ("kernel",) if conv.every_pixel else ()
    kept = tuple(p for p in ("kernel", "kernel-zeros") if p in conv.paths())
    return kept + _zeros_paths()


def _describe(path: str, zeros: float | None) -> str:
    """What `path` does, in a few words, for a conv whose input has `zeros` zeros."""
    skipping = f"skipping {100 * zeros:.0f} % zeros" if zeros is not None else ""
    return {"sparse": "sparse", "kernel": "actzip's kernel on every pixel", "dense": "dense",
            "kernel-zeros": f"actzip's kernel on every pixel, {skipping}",
            "zeros-pixel": f"{skipping} pixel by pixel", TAPS_ZEROS_PATH: f"{skipping} over its taps",
            DIRECT_ZEROS_PATH: f"{skipping}, direct 3x3"}.get(path, skipping)


def _choose(name: str, conv: CompiledConv2d, input_shape: tuple[int, ...], timed: Timings | None,
            zeros: float | None, chain: list[tuple[CompiledConv2d, Timings]]) -> LayerChoice:
    """The path of one conv: the faster one as timed, or for a conv in a hand-over `chain` (its convs
    and their timings), the one faster for the whole chain, since each conv's time there depends on
    whether its neighbours hand over."""
    def choice(path, reason, dense_ms=None, sparse_ms=None):
        conv.path = path
        return LayerChoice(name, conv.kernel_size, conv.stride, conv.groups, input_shape, conv.macs(input_shape[0]),
                           conv.sparsity if conv.masked else None, dense_ms, sparse_ms, path, reason, zeros)

    ms = timed.paths if timed is not None else None
    if chain:  # the whole chain runs the kept-pixel kernels, the paths of its fastest such side, or none does
        kept_sides = [s for s in range(len(timed.sides)) if all(_path_on(c, s) in KEPT_PATHS for c, _ in chain)]
        side = min(kept_sides, key=lambda s: sum(t.sides[s] for _, t in chain))
        kept, off = _path_on(conv, side), min((p for p in ms if p not in KEPT_PATHS), key=ms.__getitem__)
        kept_sum = sum(t.sides[side] for _, t in chain)
        off_sum = sum(min(v for p, v in t.paths.items() if p not in KEPT_PATHS) for _, t in chain)
        path = kept if kept_sum < off_sum else off
        return choice(path, f"with its chain of {len(chain)} hand-over convs, {kept} measured "
                            f"{off_sum / kept_sum:.2f}x" + (f"; {off} alone" if path == off != "dense" else ""),
                      ms["dense"], timed.sides[side] if path in ("dense", kept) else ms[path])
    if ms is not None:  # timed against its other path
        other = min(conv.alternatives, key=ms.__getitem__)
        dense_ms, other_ms = ms["dense"], ms[other]
        what = _describe(other, zeros)
        if other_ms < dense_ms:
            return choice(other, f"{what}: measured {dense_ms / other_ms:.2f}x faster", dense_ms, other_ms)
        return choice("dense", f"{what} measured {dense_ms / other_ms:.2f}x", dense_ms, other_ms)
    if not conv.masked:
        return choice("dense", "no mask" + (f", {100 * zeros:.0f} % zeros in its input" if zeros is not None else ""))
    return choice("dense", "grouped: no kept-pixel kernel" if conv.groups > 1 else "no compiled kernels")
