"""The benchmarks keep their timings per CPU: a run on one CPU never replaces another CPU's rows."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
machine = pytest.importorskip("machine")
runtime = pytest.importorskip("runtime")
sparse_conv1x1 = pytest.importorskip("sparse_conv1x1")


def _row(cpu, ms, **setting):
    row = {"kind": "semi-structured", "model": "resnet18", "batch": 8, "threads": 1, "sparsity": 0.3, "ms": ms,
           **setting}
    return {**row, "cpu": cpu} if cpu else row


def test_a_runtime_run_replaces_its_own_cpus_rows_and_keeps_the_others(tmp_path):
    out = tmp_path / "runtime.json"
    out.write_text(json.dumps([_row(None, 1.0), _row("B", 2.0), _row("B", 3.0, batch=1)]))
    rows = runtime.merged(out, [_row("B", 4.0), _row(machine.EARLIER, 5.0, batch=1)])
    assert [(r.get("cpu"), r["batch"], r["ms"]) for r in rows] == [
        (None, 8, 1.0),  # a row from before the JSON named the CPU is the earlier machine's
        ("B", 8, 4.0), ("B", 1, 3.0), (machine.EARLIER, 1, 5.0)]


def test_the_kernel_json_from_before_cpus_were_named_reads_as_one_run_of_the_earlier_cpu():
    old = {"isa": "avx512", "threads": 1, "real": [], "synthetic": []}
    assert sparse_conv1x1.runs(old) == [{"cpu": machine.EARLIER, **old}]
    assert sparse_conv1x1.runs([{"cpu": "B", **old}]) == [{"cpu": "B", **old}]


def test_the_cpu_is_named_with_its_vector_extension():
    name = machine.cpu()
    assert name and name == name.strip()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    if " avx512f" in flags:
        assert name.endswith(", AVX-512")


def test_per_layer_times_pair_each_conv_with_its_onnxruntime_node_even_out_of_order():
    runtime_layers = pytest.importorskip("runtime_layers")
    order = [("conv1", (64, 64, 3, 3)), ("conv2", (64, 64, 3, 3)), ("down", (64, 32, 1, 1)), ("fc", (10, 60, 1, 1))]
    # onnxruntime runs the downsample conv before the second conv, and pads 60 channels to 64
    nodes = [((64, 64, 3, 3), 1.0), ((64, 32, 1, 1), 3.0), ((64, 64, 3, 3), 2.0), ((16, 64, 1, 1), 4.0)]
    assert runtime_layers.matched(order, nodes) == {"conv1": 1.0, "conv2": 2.0, "down": 3.0, "fc": 4.0}
    with pytest.raises(SystemExit, match="no onnxruntime Conv node matches down"):
        runtime_layers.matched(order, nodes[:1] + [((64, 64, 1, 1), 3.0)] + nodes[2:])
    with pytest.raises(SystemExit, match="3 Conv nodes"):
        runtime_layers.matched(order, nodes[:3])
