"""onnxruntime running a compiled model's first layers (runtime/prefix.py): wherever a prefix can be
cut, the model gives the same outputs with it, at any batch size, saved and loaded too, and a
steady-state forward maps no fresh pages."""

import gc
import importlib

import pytest
import torch
from torch import nn

from actzip.models.small import mobilenet_v1
from actzip.runtime import compile, fold_batchnorm, load, prefix, save
from actzip.runtime.memory import hold_freed_memory

pytest.importorskip("onnxruntime")
OWN = ("actzip",)
compile_module = importlib.import_module("actzip.runtime.compile")  # the package exports its function


def _model(x):
    torch.manual_seed(0)
    model = mobilenet_v1(width=0.5).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.1)  # post-ReLU zeros, so that 1x1 convs may skip them
    return model


def _cuts(compiled, model, x):
    """(cut, its OnnxPrefix or None) for every cut point of the compiled graph."""
    gm = compiled.graph_module
    cuts = prefix.cut_points(gm)
    _, values, _ = prefix.prefix_times(gm, cuts, x.contiguous(memory_format=torch.channels_last), 1)
    nhwc = x.permute(0, 2, 3, 1).contiguous()
    return [(c, prefix.prefix_at(fold_batchnorm(model), c, values[c], nhwc)) for c in cuts]


def _with_prefix(x, which):
    """(model, its compiled graph before the prefix, as {conv: path}, the compiled model) with the
    `which`-th prefix that can be cut run by onnxruntime."""
    model = _model(x)
    compiled = compile(model, x, repeats=1, engines=OWN)
    paths = {c.name: c.path for c in compiled.layers}
    cut, p = [(c, p) for c, p in _cuts(compiled, model, x) if p is not None][which]
    compiled.use_prefix(prefix.with_prefix(compiled.graph_module, cut, p), "timed faster")
    return model, paths, compiled


def test_every_prefix_that_can_be_cut_gives_the_models_outputs():
    x = torch.rand(4, 1, 28, 28)
    model = _model(x)
    compiled = compile(model, x, repeats=1, engines=OWN)
    cuts = _cuts(compiled, model, x)
    taken = [(c, p) for c, p in cuts if p is not None]
    assert len(taken) >= 5
    runs_next = [n for n in compiled.graph_module.graph.nodes if n.op == "call_module"
                 and getattr(compiled.graph_module.get_submodule(n.target), "passes_input", False)]
    assert not set(runs_next) & {c for c, _ in cuts}  # a conv that the conv after it runs holds no tensor
    assert len(taken) == len(cuts)  # every other cut holds the folded model's tensor
    with torch.no_grad():
        want, want1 = model(x), model(x[:1])
        for cut, p in taken:
            hybrid = prefix.with_prefix(compiled.graph_module, cut, p)
            scale = float(want.abs().max())
            assert (hybrid(x.contiguous(memory_format=torch.channels_last)) - want).abs().max() <= 1e-4 * scale, cut
            assert (hybrid(x[:1].contiguous(memory_format=torch.channels_last)) - want1).abs().max() <= 1e-4 * scale


def test_a_model_with_a_prefix_reports_it_saves_and_loads(tmp_path):
    x = torch.rand(4, 1, 28, 28)
    model, paths, compiled = _with_prefix(x, 2)
    ran = {n.target for n in compiled.graph_module.graph.nodes if n.op == "call_module"}
    assert "onnx_prefix" in ran
    for layer in compiled.layers:  # the convs before the cut run in onnxruntime, the others as chosen
        assert layer.path == ("onnxruntime" if layer.name not in ran else paths[layer.name])
    assert sum(c.path == "onnxruntime" for c in compiled.layers) >= 2
    save(compiled, tmp_path / "m.azc")
    loaded = load(tmp_path / "m.azc")
    assert [c.path for c in loaded.layers] == [c.path for c in compiled.layers]
    with torch.no_grad():
        want = model(x)
        for y in (compiled(x), loaded(x)):
            assert (y - want).abs().max() <= 1e-4 * float(want.abs().max())
        assert (loaded(x[:2]) - want[:2]).abs().max() <= 1e-4 * float(want.abs().max())
        for m in (compiled, loaded):  # refused as the graph refuses it, before onnxruntime sees it
            with pytest.raises(ValueError, match="compiled for 28x28"):
                m(torch.rand(1, 1, 32, 32))


@pytest.mark.skipif(not hold_freed_memory(), reason="glibc only")
def test_a_steady_state_forward_with_a_prefix_maps_no_fresh_pages(steady_state_faults):
    x = torch.rand(64, 1, 28, 28)
    _, _, compiled = _with_prefix(x, 2)
    gc.collect()
    with torch.no_grad():
        windows = steady_state_faults(lambda: compiled(x))
    assert min(windows) == 0, windows


def test_the_threads_the_user_set_run_the_prefix():
    x = torch.rand(2, 1, 28, 28)
    _, _, compiled = _with_prefix(x, 0)
    options = compiled.graph_module.onnx_prefix.session.get_session_options()
    assert options.intra_op_num_threads == torch.get_num_threads()
    threads = torch.get_num_threads()
    with torch.no_grad():
        compiled(x)
    assert torch.get_num_threads() == threads


def test_a_file_whose_prefix_is_broken_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    from actzip.errors import ActzipError

    x = torch.rand(2, 1, 28, 28)
    _, _, compiled = _with_prefix(x, 0)
    save(compiled, tmp_path / "m.azc")
    with safe_open(str(tmp_path / "m.azc"), "pt") as f:
        meta = f.metadata()
    tensors = load_file(tmp_path / "m.azc")
    garbled = dict(tensors, **{"onnx_prefix.onnx": torch.full((64,), 7, dtype=torch.uint8)})
    save_file(garbled, tmp_path / "garbled.azc", metadata=meta)
    with pytest.raises(ActzipError, match="cannot load this ONNX model"):
        load(tmp_path / "garbled.azc")
    save_file({k: v for k, v in tensors.items() if k != "onnx_prefix.onnx"}, tmp_path / "missing.azc", metadata=meta)
    with pytest.raises(ActzipError, match="cannot rebuild"):
        load(tmp_path / "missing.azc")


def test_no_prefix_whose_buffer_would_be_the_models_output(monkeypatch):
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Identity()).eval()
    x = torch.rand(2, 1, 8, 8)
    compiled = compile(model, x, repeats=1, engines=OWN)
    cut, p = _cuts(compiled, model, x)[-1]  # the last conv: only its own tensor follows
    assert p is not None
    monkeypatch.setattr(prefix, "best_prefix", lambda *args: (cut, p, 1.0, 0.0))  # found, and faster:
    monkeypatch.setattr(compile_module, "time_in_turns", lambda runs, *args: {"graph": [2.0], "prefix": [1.0]})
    compiled.choose_prefix(fold_batchnorm(model), x.contiguous(memory_format=torch.channels_last), 1)
    assert not hasattr(compiled.graph_module, "onnx_prefix")
    with torch.no_grad():
        first = compiled(x)
        compiled(torch.rand(2, 1, 8, 8))
        assert (first - model(x)).abs().max() <= 1e-5
