import json
import subprocess
import sys

import pytest

from actzip.cli import app
from typer.testing import CliRunner

runner = CliRunner()


def run(*args):
    return runner.invoke(app, list(args))


MODEL = "tests.conftest:TinyNet"


def test_analyze_end_to_end_on_a_folder(tmp_path):
    from PIL import Image
    for i in range(3):
        Image.new("RGB", (48, 40), (30 * i, 100, 0)).save(tmp_path / f"{i}.png")
    r = run("analyze", "--model", MODEL, "--images", str(tmp_path), "--bits", "8", "--out", str(tmp_path / "o"))
    assert r.exit_code == 0, r.output
    assert "conv2#2" in r.output and "wrote" in r.output
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["images"] == 3 and report["bits"] == [8]


@pytest.mark.parametrize("args,message", [
    (["--bits", "0"], "bit width"),
    (["--bits", "17"], "bit width"),
    (["--bits", "eight"], "comma-separated"),
    (["--model", "nosuchmodel"], "unknown model"),
    (["--model", "json:dumps"], "raised TypeError"),
    (["--model", "collections:OrderedDict"], "not a torch.nn.Module"),
    (["--images", "/no/such/dir"], "neither a folder"),
    (["--out", "/proc/actzip-cannot-write"], "cannot write"),
])
def test_bad_input_gives_one_line_and_exit_2(args, message):
    r = run("analyze", *args, "--limit", "1")
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    assert message in r.output


def test_model_without_sites(tmp_path):
    (tmp_path / "flat.py").write_text("import torch\ndef make():\n    return torch.nn.Flatten()\n")
    from PIL import Image
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    r = run("analyze", "--model", f"{tmp_path}/flat.py:make", "--images", str(tmp_path), "--out", str(tmp_path / "o"))
    assert r.exit_code == 2 and "no Conv2d or Linear" in r.output


def test_folder_with_only_non_images(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    r = run("analyze", "--model", MODEL, "--images", str(tmp_path), "--out", str(tmp_path / "o"))
    assert r.exit_code == 2 and "no images" in r.output


def test_console_script_exit_code(tmp_path):
    p = subprocess.run([sys.executable, "-m", "actzip", "analyze", "--bits", "17", "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "bit width" in p.stderr


def test_bench_runtime_writes_json_and_refuses_bad_input(tmp_path):
    out = tmp_path / "bench.json"
    r = run("bench", "runtime", "--model", "resnet20", "--sparsity", "0.3", "--batch", "2", "--rounds", "1",
            "--out", str(out))
    assert r.exit_code == 0, r.output
    result = json.loads(out.read_text())
    assert result["model"] == "resnet20" and result["input_shape"] == [2, 1, 28, 28]
    assert result["compile"]["convs"] == 21 and abs(result["sparsity"] - 0.3) < 0.02
    assert "masked convs run sparse" in r.output
    for args, message in [(["--sparsity", "1"], "[0, 1)"), ([], "no pixel masks"), (["--batch", "0"], "at least 1")]:
        r = run("bench", "runtime", "--model", "resnet20", *args, "--out", str(tmp_path / "x.json"))
        assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "x.json").exists()
