"""A compiled model saved, then loaded in a new process: the same outputs, the same choices, no
recompilation, any batch size, and a clear error for anything else."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from actzip.errors import ActzipError
from actzip.models.small import mobilenet_v1, resnet20
from actzip.runtime.pool import CompiledMaxPool2d
from actzip.runtime import CompiledConv2d, compile, load, native, prefix, save
from actzip.runtime.compile import _hand_over, _hand_over_pairs
from actzip.sparsify import PixelMask, attach_pixel_masks

LOAD_AND_RUN = """
import sys, json, numpy as np, torch
from actzip.runtime import load
model = load(sys.argv[1])
x = torch.from_numpy(np.load(sys.argv[2]))
with torch.no_grad():
    np.save(sys.argv[3], model(x).numpy())
    np.save(sys.argv[4], model(x[:1]).numpy())
print(json.dumps({"engine": model.engine, "paths": [c.path for c in model.layers]}))
"""


def _model(build, sparsity, x):
    torch.manual_seed(0)
    model = build().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    if sparsity:
        attach_pixel_masks(model, PixelMask(sparsity), x).update(1.0)
    return model


def _pooled():
    """A stem with a max pool, as in ResNet18."""
    return nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
                         nn.Conv2d(16, 24, 3, 1, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10))


@pytest.mark.parametrize("build", [lambda: resnet20(width=0.5), lambda: mobilenet_v1(width=0.5), _pooled])
@pytest.mark.parametrize("sparsity", [0.0, 0.4])
@pytest.mark.parametrize("engine", ["actzip", "onnxruntime"])
def test_a_saved_model_runs_in_a_new_process(build, sparsity, engine, tmp_path, monkeypatch):
    x = torch.rand(4, 1, 28, 28)
    model = _model(build, sparsity, x)
    # every module of the graph must make the trip: no prefix in onnxruntime (test_prefix.py saves one)
    monkeypatch.setattr(prefix, "best_prefix", lambda *args: None)
    compiled = compile(model, x, repeats=1, engines=("actzip", "onnxruntime"))
    compiled.engine = engine  # both engines must survive the trip, whichever was faster here
    if build is _pooled:
        assert any(isinstance(m, CompiledMaxPool2d) for m in compiled.modules())
    if engine == "actzip":
        for m in compiled.modules():  # and every path of the graph
            if getattr(m, "sparse_capable", False) and m.masked:
                m.path = "sparse"
            if getattr(m, "every_pixel", False):
                m.path = "kernel"
        gm = compiled.graph_module  # with every hand-over of kept pixels those paths allow
        _hand_over(dict(gm.named_modules()), _hand_over_pairs(gm))
    save(compiled, tmp_path / "m.azc")
    np.save(tmp_path / "x.npy", x.numpy())
    p = subprocess.run([sys.executable, "-c", LOAD_AND_RUN, str(tmp_path / "m.azc"), str(tmp_path / "x.npy"),
                        str(tmp_path / "y.npy"), str(tmp_path / "y1.npy")], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    loaded = json.loads(p.stdout.strip().splitlines()[-1])
    assert loaded == {"engine": engine, "paths": [c.path for c in compiled.layers]}
    with torch.no_grad():
        want = model(x).numpy()
    scale = np.abs(want).max()
    assert np.abs(np.load(tmp_path / "y.npy") - want).max() <= 1e-4 * scale
    assert np.abs(np.load(tmp_path / "y1.npy") - want[:1]).max() <= 1e-4 * scale  # another batch size


def test_a_loaded_model_refuses_another_input_size_and_bad_files(tmp_path):
    x = torch.rand(2, 1, 28, 28)
    compiled = compile(_model(lambda: resnet20(width=0.5), 0.3, x), x, repeats=1, engines=("actzip",))
    save(compiled, tmp_path / "m.azc")
    with pytest.raises(ValueError, match="compiled for 28x28"):
        load(tmp_path / "m.azc")(torch.rand(1, 1, 32, 32))
    (tmp_path / "bad.azc").write_bytes(b"not a model")
    with pytest.raises(ActzipError, match="not a compiled actzip model"):
        load(tmp_path / "bad.azc")


def test_modules_it_cannot_rebuild_are_refused_when_saving(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GELU()).eval()  # a leaf module not on the list
    compiled = compile(model, torch.rand(1, 1, 8, 8), repeats=1, engines=("actzip",))
    with pytest.raises(ActzipError, match="cannot save a compiled model holding a GELU"):
        save(compiled, tmp_path / "m.azc")
    assert not (tmp_path / "m.azc").exists()


def test_cli_compile_writes_a_model_that_loads(tmp_path):
    from typer.testing import CliRunner

    from actzip.cli import app

    out = tmp_path / "r20.azc"
    r = CliRunner().invoke(app, ["compile", "--model", "resnet20", "--sparsity", "0.3", "--batch", "2", "--out", str(out)])
    assert r.exit_code == 0 and "engine" in r.output, r.output
    model = load(out)
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    r = CliRunner().invoke(app, ["compile", "--model", "resnet20", "--sparsity", "1.5", "--out", str(tmp_path / "x.azc")])
    assert r.exit_code == 2 and "Traceback" not in r.output and not (tmp_path / "x.azc").exists()


def test_a_path_this_machine_cannot_run_loads_as_the_dense_conv(tmp_path, monkeypatch):
    x = torch.rand(2, 1, 28, 28)
    model = _model(lambda: mobilenet_v1(width=0.5), 0.0, x)
    compiled = compile(model, x, repeats=1, engines=("actzip",))
    depthwise = [m for m in compiled.modules() if getattr(m, "every_pixel", False)]
    assert depthwise
    for m in depthwise:
        m.path = "kernel"
    save(compiled, tmp_path / "m.azc")
    monkeypatch.setattr(native, "library", lambda: None)  # a machine where the kernels were not built
    loaded = load(tmp_path / "m.azc")
    convs = [m for m in loaded.modules() if isinstance(m, CompiledConv2d)]
    assert convs and all(m.path == "dense" for m in convs)
    with torch.no_grad():
        want = model(x)
        assert (loaded(x) - want).abs().max() <= 1e-4 * want.abs().max()
