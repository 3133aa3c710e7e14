"""torchrun with 2 processes (gloo) on this machine: the sharded analysis equals the single-process
one, and DDP training with the same global batch matches single-process training."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_two_class_folder

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = Path(sys.executable).with_name("torchrun")
pytestmark = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args, nproc=None):
    """python -m actzip ARGS, or under torchrun with nproc processes; one thread each, so both agree
    to the last bit on every batch."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    if nproc:
        cmd = [str(TORCHRUN), "--nproc_per_node", str(nproc), "--master_port", str(free_port()), "-m", "actzip",
               *args]
    else:
        cmd = [sys.executable, "-m", "actzip", *args]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    return p


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_two_class_folder(tmp_path_factory.mktemp("dist"))


def test_sharded_analysis_equals_single_process(images, tmp_path):
    from conftest import TinyNet

    torch.save(TinyNet().state_dict(), tmp_path / "tiny.pt")
    args = ["analyze", "--model", "tests.conftest:TinyNet", "--weights", str(tmp_path / "tiny.pt"),
            "--images", str(images / "train"), "--bits", "8,16", "--batch-size", "5", "--codecs", "zvc,seg,ctx"]
    run([*args, "--out", str(tmp_path / "one")])
    run([*args, "--out", str(tmp_path / "two")], nproc=2)
    one = json.loads((tmp_path / "one" / "report.json").read_text())
    two = json.loads((tmp_path / "two" / "report.json").read_text())
    assert one["images"] == two["images"] == 48
    assert one["sites"] == two["sites"] and one["totals"] == two["totals"]


# In float64 the only difference between one process and two is the order of the gradient sums,
# worth ~1e-15 relative per step; float32's ~1e-7 grows through training to 1e-4 on some CPUs and
# would hide nothing but noise. 1e-9 leaves a wide margin over the one and none for a real bug.
EXACT = dict(rtol=1e-9, atol=1e-10)


def test_ddp_training_matches_single_process(images, tmp_path):
    args = ["train", "--dataset", str(images), "--epochs", "1", "--batch-size", "8", "--width", "0.25",
            "--eval-images", "8", "--l1", "1e-3", "--lr", "0.02", "--sync-batchnorm", "--float64"]
    run([*args, "--out", str(tmp_path / "one")])
    run([*args, "--out", str(tmp_path / "two")], nproc=2)
    a = torch.load(tmp_path / "one" / "weights.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "weights.pt", weights_only=True)
    assert a.keys() == b.keys()
    assert a["fc.weight"].dtype == torch.float64
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), **EXACT), k
    m1 = json.loads((tmp_path / "one" / "metrics.jsonl").read_text().splitlines()[0])
    m2 = json.loads((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()[0])
    assert m1["loss"] == pytest.approx(m2["loss"], rel=1e-9)
    assert m1["zero_fraction"] == pytest.approx(m2["zero_fraction"], abs=1e-3)


def test_ddp_training_with_pixel_masks_masks_what_one_process_masks(images, tmp_path):
    args = ["train", "--dataset", str(images), "--epochs", "1", "--batch-size", "8", "--width", "0.25",
            "--eval-images", "8", "--lr", "0.02", "--sync-batchnorm", "--pixel-sparsity", "0.3",
            "--pixel-criterion", "magnitude", "--float64"]
    run([*args, "--out", str(tmp_path / "one")])
    run([*args, "--out", str(tmp_path / "two")], nproc=2)
    a = torch.load(tmp_path / "one" / "weights.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "weights.pt", weights_only=True)
    masks = [k for k in a if k.endswith(".pixel_mask")]
    assert masks and all(torch.equal(a[k], b[k]) for k in masks)
    assert all(0.25 < 1 - float(a[k].mean()) < 0.35 for k in masks if a[k].numel() >= 16)
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), **EXACT), k
