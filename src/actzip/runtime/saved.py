"""A compiled model in one file, loaded in another process without the original model or a new compile.

The file is safetensors: every tensor (folded weights and biases, pixel masks and their BN(0) values,
the other modules' parameters, or the ONNX model when onnxruntime is the engine or runs the first
layers), and in its metadata
a JSON description: the engine, the input shape, the report, each conv's geometry and chosen path,
the other modules by class and constructor arguments, and the graph node by node. Nothing is
unpickled: modules come from a list of known classes and functions from a list of known modules,
so a file from elsewhere can at worst fail to load (ActzipError), not run code.

`save(compiled, path)` and `load(path)`; the batch size may change after loading, the spatial size not.
"""

from __future__ import annotations

import inspect
import json
import operator
from dataclasses import asdict
from pathlib import Path

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..errors import ActzipError
from ..fileio import atomic_write
from .compile import CompiledModel, LayerChoice, link_kept_rows
from .conv import CompiledConv2d, Workspace
from .fold import MaskedConv2d
from .pool import CompiledMaxPool2d
from .prefix import OnnxPrefix

FORMAT = "actzip.compiled/1"
MODULES = {cls.__name__: cls for cls in (nn.Linear, nn.Dropout, nn.Flatten, nn.AdaptiveAvgPool2d, nn.AvgPool2d,
                                         nn.MaxPool2d, nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
                                         nn.Sigmoid, nn.SiLU, nn.Identity, nn.BatchNorm2d, nn.ZeroPad2d,
                                         CompiledMaxPool2d)}
FUNCTION_HOMES = {"operator": operator, "torch": torch, "torch.nn.functional": F}


def save(compiled: CompiledModel, path: str | Path) -> None:
    """Write `compiled` to `path` (atomically)."""
    from safetensors.torch import save as to_bytes

    tensors: dict[str, torch.Tensor] = {}
    meta = {"format": FORMAT, "engine": compiled.engine, "input_shape": list(compiled.input_shape),
            "note": compiled.note, "engine_ms": compiled.engine_ms, "max_abs_error": compiled.max_abs_error,
            "layers": [asdict(c) for c in compiled.layers]}
    if compiled.engine == "onnxruntime":
        tensors["onnx"] = torch.frombuffer(bytearray(compiled.onnxruntime.onnx), dtype=torch.uint8)
    else:
        meta["modules"] = {name: _module_spec(name, m, tensors) for name, m in _leaves(compiled.graph_module)}
        meta["graph"] = [_node_spec(n) for n in compiled.graph_module.graph.nodes]
    atomic_write(Path(path), to_bytes(tensors, metadata={"actzip": json.dumps(meta)}))


def load(path: str | Path) -> CompiledModel:
    """The compiled model saved in `path` (see the module doc)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})["actzip"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, SafetensorError, ValueError, KeyError, TypeError) as e:
        raise ActzipError(f"{path} is not a compiled actzip model: {str(e)[:200]}") from None
    if meta.get("format") != FORMAT:
        raise ActzipError(f"{path} is a compiled model of format {meta.get('format')!r}, this actzip reads {FORMAT}")
    layers = [LayerChoice(**{**c, "kernel": tuple(c["kernel"]), "stride": tuple(c["stride"]),
                             "input_shape": tuple(c["input_shape"])}) for c in meta["layers"]]
    if meta["engine"] == "onnxruntime":
        from .onnx import session_from_bytes

        graph = fx.GraphModule(nn.Module(), fx.Graph())
        result = CompiledModel(graph, layers, tuple(meta["input_shape"]), meta["note"])
        result.engine, result.onnxruntime = "onnxruntime", session_from_bytes(tensors["onnx"].numpy().tobytes())
    else:
        try:
            graph = _graph(meta, tensors)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:  # metadata that does not fit its tensors
            raise ActzipError(f"{path} holds a compiled graph actzip cannot rebuild: {str(e)[:200]}") from None
        link_kept_rows(graph)  # the hand-over of kept rows follows from the saved paths
        result = CompiledModel(graph, layers, tuple(meta["input_shape"]), meta["note"])
    result.engine_ms, result.max_abs_error = meta["engine_ms"], meta["max_abs_error"]
    return result


def _leaves(gm: fx.GraphModule):
    """(path, module) of every module a graph node calls."""
    return [(n.target, gm.get_submodule(n.target)) for n in gm.graph.nodes if n.op == "call_module"]


def _module_spec(name: str, m: nn.Module, tensors: dict) -> dict:
    """What rebuilds module `m`; its tensors go into `tensors` under `name.`."""
    for key, t in m.state_dict().items():
        tensors[f"{name}.{key}"] = t.detach().contiguous().clone()
    if isinstance(m, CompiledConv2d):
        conv = {"in": m.in_channels, "out": m.out_channels, "kernel": list(m.kernel_size), "stride": list(m.stride),
                "dilation": list(m.dilation), "groups": m.groups, "pads": list(m.pads)}
        return {"kind": "CompiledConv2d", "conv": conv, "bounds": list(m.bounds) if m.bounds else None,
                "input_shape": [m.batch, m.in_channels, *m.input_hw], "residual": m.residual, "path": m.path,
                "feeds_kept_only": m.feeds_kept_only, "masked": m.masked}
    if isinstance(m, OnnxPrefix):  # its ONNX model is its tensor "onnx"
        return {"kind": "OnnxPrefix", "rows": m.rows}
    if type(m).__name__ not in MODULES or type(m) is not MODULES[type(m).__name__]:
        raise ActzipError(f"cannot save a compiled model holding a {type(m).__name__}: known modules are "
                          f"{', '.join(MODULES)}")
    args = {}
    for p in inspect.signature(type(m).__init__).parameters.values():
        value = getattr(m, p.name, None) if p.name not in ("self", "device", "dtype") else None
        if p.name == "bias" and (value is None or isinstance(value, torch.Tensor)):
            args["bias"] = value is not None
        elif isinstance(value, (bool, int, float, str, tuple, list)) or value is None and p.name in vars(m):
            args[p.name] = list(value) if isinstance(value, tuple) else value
    return {"kind": type(m).__name__, "args": args}


def _node_spec(node: fx.Node) -> dict:
    target = node.target
    if node.op == "get_attr":
        raise ActzipError(f"cannot save a compiled graph that reads the attribute {target}")
    if node.op == "call_function":
        home = next((h for h, mod in FUNCTION_HOMES.items() if getattr(mod, target.__name__, None) is target), None)
        if home is None:
            raise ActzipError(f"cannot save a compiled model calling {target}")
        target = f"{home}:{target.__name__}"
    return {"name": node.name, "op": node.op, "target": target, "args": _encode(node.args),
            "kwargs": _encode(node.kwargs)}


def _encode(value):
    if isinstance(value, fx.Node):
        return {"node": value.name}
    if isinstance(value, (tuple, list)):
        return {"seq": [_encode(v) for v in value], "tuple": isinstance(value, tuple)}
    if isinstance(value, dict):
        return {"map": {k: _encode(v) for k, v in value.items()}}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}
    raise ActzipError(f"cannot save a graph argument of type {type(value).__name__}")


def _decode(value, nodes: dict):
    if "node" in value:
        return nodes[value["node"]]
    if "seq" in value:
        items = [_decode(v, nodes) for v in value["seq"]]
        return tuple(items) if value["tuple"] else items
    if "map" in value:
        return {k: _decode(v, nodes) for k, v in value["map"].items()}
    return value["value"]


def _graph(meta: dict, tensors: dict) -> fx.GraphModule:
    """The actzip graph: its modules rebuilt from their specs and tensors, its nodes from theirs."""
    root, workspace = nn.Module(), Workspace()
    for name, spec in meta["modules"].items():
        state = {k[len(name) + 1:]: t for k, t in tensors.items() if k.startswith(name + ".")}
        _place(root, name, _module(spec, state, workspace))
    graph, nodes = fx.Graph(), {}
    for spec in meta["graph"]:
        target = spec["target"]
        if spec["op"] == "call_function":
            home, _, fn = target.partition(":")
            if home not in FUNCTION_HOMES or not callable(getattr(FUNCTION_HOMES[home], fn, None)):
                raise ActzipError(f"a saved graph calls {target}, which actzip does not load")
            target = getattr(FUNCTION_HOMES[home], fn)
        node = graph.create_node(spec["op"], target, _decode(spec["args"], nodes), _decode(spec["kwargs"], nodes),
                                 name=spec["name"])
        nodes[spec["name"]] = node
    return fx.GraphModule(root, graph)


def _module(spec: dict, state: dict, workspace: Workspace) -> nn.Module:
    if spec["kind"] == "CompiledConv2d":
        c = spec["conv"]
        top, bottom, left, right = c["pads"]
        base = nn.Conv2d(c["in"], c["out"], c["kernel"], c["stride"], 0, c["dilation"], c["groups"])
        base.static_padding = nn.ZeroPad2d((left, right, top, bottom))  # the folded pads, as a static pad
        mask = value = None
        if spec["masked"]:  # the mask, rebuilt from its kept pixels; masked pixels carry `fill`
            hw = _output_hw(spec)
            mask = torch.zeros(hw[0] * hw[1])
            mask[state["kept_pixels"]] = 1
            mask, value = mask.reshape(1, 1, *hw), state["fill"]
        conv = MaskedConv2d(base, state["weight"], state["bias"], mask, value)
        fast = CompiledConv2d(conv, tuple(spec["bounds"]) if spec["bounds"] else None, tuple(spec["input_shape"]),
                              workspace, spec["residual"])
        # a path this machine cannot run (saved where the compiled kernels were built) runs dense
        fast.path = spec["path"] if spec["path"] in fast.paths() else "dense"
        fast.feeds_kept_only = spec["feeds_kept_only"]
        return fast
    if spec["kind"] == "OnnxPrefix":
        return OnnxPrefix(state["onnx"], bool(spec["rows"]))
    if spec["kind"] not in MODULES:
        raise ActzipError(f"a saved graph holds a {spec['kind']!r}, which actzip does not load")
    module = MODULES[spec["kind"]](**spec["args"])
    module.load_state_dict(state)
    return module.eval()


def _output_hw(spec: dict) -> tuple[int, int]:
    c, (h, w) = spec["conv"], spec["input_shape"][2:]
    top, bottom, left, right = c["pads"]
    (kh, kw), (sh, sw), (dh, dw) = c["kernel"], c["stride"], c["dilation"]
    return (h + top + bottom - dh * (kh - 1) - 1) // sh + 1, (w + left + right - dw * (kw - 1) - 1) // sw + 1


def _place(root: nn.Module, path: str, module: nn.Module) -> None:
    parent = root
    *heads, last = path.split(".")
    for head in heads:
        if not hasattr(parent, head):
            parent.add_module(head, nn.Module())
        parent = getattr(parent, head)
    parent.add_module(last, module)
