"""onnxruntime for a compiled model's first layers, where it measures faster than actzip's graph.

A CNN's first layers (large maps, few channels, few zeros) are where skipping work gains least and
onnxruntime's blocked kernels do best. So `compile` also times onnxruntime on prefixes of the
model, each ending where one tensor alone flows on, against the compiled graph's own time to that
point; where the best one saves enough, and the whole forward measures faster with it, that prefix
of the graph becomes one `OnnxPrefix` module. The prefix is exported from the folded model (masks
included) with NHWC in and out: onnxruntime folds the transposes into its own layout changes, and
the graph's channels_last tensors pass in and out without a copy.

A cut is taken only where the compiled graph's tensor there equals the folded model's, laid out as
the graph has it (a 4-D channels_last map, or its rows): a conv fused into the one after it, or one
handing over compact kept rows, holds no such tensor.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from .onnx import export, session_from_bytes

MAX_CUTS = 12  # prefixes timed in onnxruntime: each costs an export and a session
MIN_SAVING = 0.03  # of the whole forward: below it, a saving measured on a prefix is noise here
# Once onnxruntime's prefix is this much of a whole forward slower than the graph's, deeper cuts
# are not tried: its later layers would have to win all of that back (on Lite0, no prefix of
# onnxruntime's was faster, and each cut tried cost an export)
GIVE_UP = 0.05


class OnnxPrefix(nn.Module):
    """The layers before a cut, run by onnxruntime: the graph's channels_last input in, the cut's
    tensor out as the graph lays it out (`rows`: a (pixels, channels) matrix; else channels_last).
    Its output buffer is kept from one forward to the next, for each batch size in turn."""

    def __init__(self, onnx: bytes | torch.Tensor, rows: bool):
        super().__init__()
        data = onnx if isinstance(onnx, torch.Tensor) else torch.frombuffer(bytearray(onnx), dtype=torch.uint8)
        self.register_buffer("onnx", data.clone())
        self.rows = rows
        # workers sleep when idle: spinning, they took the cores from actzip's kernels after the prefix
        self.session = session_from_bytes(self.onnx.numpy().tobytes(), spinning=False).session
        self.sample_shape = list(self.session.get_outputs()[0].shape[1:])  # (h, w, c)
        self.out: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nhwc = x.permute(0, 2, 3, 1)
        if not nhwc.is_contiguous():
            nhwc = nhwc.contiguous()
        shape = [x.shape[0], *self.sample_shape]
        if self.out is None or list(self.out.shape) != shape:
            self.out = torch.empty(shape)
        binding = self.session.io_binding()
        binding.bind_input("x", "cpu", 0, np.float32, list(nhwc.shape), nhwc.data_ptr())
        binding.bind_output("y", "cpu", 0, np.float32, shape, self.out.data_ptr())
        self.session.run_with_iobinding(binding)
        return self.out.view(-1, shape[3]) if self.rows else self.out.permute(0, 3, 1, 2)


def of_input_only(node: fx.Node) -> bool:
    """Whether `node` reads nothing but the graph's input (as `x.size(0)` does): it can run after a cut."""
    return node.op in ("call_method", "call_function") and all(n.op == "placeholder" for n in node.all_input_nodes)


def cut_points(gm: fx.GraphModule) -> list[fx.Node]:
    """The call_module nodes of a 4-D map (as traced: `ShapeProp`) after which no earlier value but
    their own (and the input's, and what reads the input alone) is used again; none whose module
    hands its input on to the conv after it, which runs both (it holds no tensor of its own)."""
    nodes = list(gm.graph.nodes)
    position = {n: i for i, n in enumerate(nodes)}
    cuts, live_until = [], -1  # the last use of any earlier value that a cut would cut off
    for i, node in enumerate(nodes):
        meta = node.meta.get("tensor_meta")
        last_use = max((position[u] for u in node.users), default=-1)
        if node.op == "call_module" and len(getattr(meta, "shape", ())) == 4 and live_until <= i < last_use \
                and all(u.op != "output" for u in node.users) \
                and not getattr(gm.get_submodule(node.target), "passes_input", False):
            cuts.append(node)
        if node.op != "placeholder" and not of_input_only(node):
            live_until = max(live_until, last_use)
    return cuts


def stands_for(node: fx.Node) -> str:
    """The name of the folded model's node whose tensor the compiled `node` computes (a conv that
    does the activation or residual add after it computes that one's)."""
    return node.meta.get("stands_for", node.name)


def prefix_graph(folded: fx.GraphModule, end: str) -> fx.GraphModule:
    """The folded model up to its node `end`, taking and giving NHWC tensors."""
    nodes = {n.name: n for n in folded.graph.nodes}
    needed, todo = set(), [nodes[end]]
    while todo:
        n = todo.pop()
        if n not in needed:
            needed.add(n)
            todo.extend(n.all_input_nodes)
    graph, env = fx.Graph(), {}
    for n in folded.graph.nodes:
        if n not in needed:
            continue
        if n.op == "placeholder":
            env[n] = graph.call_method("permute", (graph.placeholder("x"), 0, 3, 1, 2))
        else:
            env[n] = graph.node_copy(n, env.__getitem__)
    graph.output(graph.call_method("permute", (env[nodes[end]], 0, 2, 3, 1)))
    return fx.GraphModule(folded, graph)


def as_graph_has_it(nhwc: torch.Tensor, like: torch.Tensor) -> torch.Tensor | None:
    """The NHWC tensor laid out as the graph's tensor `like` (rows or channels_last), or None if
    `like` is neither."""
    if like.dim() == 2 and like.shape == (nhwc.shape[0] * nhwc.shape[1] * nhwc.shape[2], nhwc.shape[3]):
        return nhwc.reshape(like.shape)
    if like.dim() == 4 and like.shape == nhwc.permute(0, 3, 1, 2).shape:
        return nhwc.permute(0, 3, 1, 2)
    return None


def with_prefix(gm: fx.GraphModule, cut: fx.Node, prefix: OnnxPrefix) -> fx.GraphModule:
    """A graph module on `gm`'s modules whose nodes up to `cut` are one call of `prefix` (its
    module "onnx_prefix"); `gm` stays as it was."""
    root = nn.Module()
    for name, module in gm.named_children():
        root.add_module(name, module)
    root.add_module("onnx_prefix", prefix)
    graph, env, before = fx.Graph(), {}, True
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            env[n] = graph.node_copy(n)
            start = env[n]
        elif before and of_input_only(n):
            env[n] = graph.node_copy(n, env.__getitem__)
        elif before:
            before = n is not cut
            if not before:
                env[n] = graph.call_module("onnx_prefix", (start,))
        else:
            env[n] = graph.node_copy(n, env.__getitem__)
    return fx.GraphModule(root, graph)


def prefix_times(gm: fx.GraphModule, cuts: list[fx.Node], example: torch.Tensor, repeats: int):
    """(ms from the forward's start to each cut's end, and of the whole forward, medians over
    `repeats` forwards; each cut's tensor on the example)."""
    stamps: dict = {c: [] for c in cuts + [None]}
    values, start = {}, [0.0]

    def done(m, a, out, c):
        stamps[c].append(time.perf_counter() - start[0])
        if c not in values:  # on the first forward, which is not timed
            values[c] = out.detach().clone() if isinstance(out, torch.Tensor) else None

    hooks = [gm.get_submodule(c.target).register_forward_hook(lambda m, a, out, c=c: done(m, a, out, c)) for c in cuts]
    try:
        with torch.no_grad():
            for _ in range(repeats + 1):  # the first forward warms up and is dropped
                start[0] = time.perf_counter()
                gm(example)
                stamps[None].append(time.perf_counter() - start[0])
    finally:
        for h in hooks:
            h.remove()
    ms = {c: 1e3 * statistics.median(v[1:]) for c, v in stamps.items()}
    return ms, values, ms.pop(None)


def session_ms(prefix: OnnxPrefix, example: torch.Tensor, repeats: int) -> float:
    prefix(example)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        prefix(example)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def prefix_at(folded: fx.GraphModule, cut: fx.Node, value: torch.Tensor | None,
              nhwc: torch.Tensor) -> OnnxPrefix | None:
    """The OnnxPrefix of the folded model up to what `cut` computes, if the graph's tensor there,
    `value` on the example (`nhwc`, the example as NHWC), is that tensor laid out as the graph has it."""
    if value is None or stands_for(cut) not in {n.name for n in folded.graph.nodes}:
        return None
    module = prefix_graph(folded, stands_for(cut))
    with torch.no_grad():
        want = as_graph_has_it(module(nhwc), value)
    if want is None or (want - value).abs().max() > 1e-4 * float(want.abs().max()) + 1e-5:
        return None  # the graph holds no such tensor there (see the module doc)
    return OnnxPrefix(export(module, nhwc), rows=value.dim() == 2)


def best_prefix(gm: fx.GraphModule, folded: fx.GraphModule, example: torch.Tensor,
                repeats: int) -> tuple[fx.Node, OnnxPrefix, float, float] | None:
    """(cut, its OnnxPrefix, the graph's ms to the cut, onnxruntime's) for the cut where onnxruntime
    saves the most time on the example, if that is MIN_SAVING of the whole forward or more."""
    cuts = cut_points(gm)
    if len(cuts) > MAX_CUTS:
        cuts = [cuts[round(i * (len(cuts) - 1) / (MAX_CUTS - 1))] for i in range(MAX_CUTS)]
    graph_ms, values, whole_ms = prefix_times(gm, cuts, example, repeats)
    nhwc = example.permute(0, 2, 3, 1).contiguous()
    best = None
    for cut in cuts:
        if graph_ms[cut] < MIN_SAVING * whole_ms or (prefix := prefix_at(folded, cut, values.get(cut), nhwc)) is None:
            continue
        ms = session_ms(prefix, example, repeats)
        if graph_ms[cut] - ms >= MIN_SAVING * whole_ms and (best is None or graph_ms[cut] - ms > best[2] - best[3]):
            best = (cut, prefix, graph_ms[cut], ms)
        if ms - graph_ms[cut] > GIVE_UP * whole_ms:
            break
    return best
