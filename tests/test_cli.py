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


# -- bad input: one line, exit 2, nothing written ------------------------------------------------

def _one_line_error(args, message, tmp_path, written=()):
    r = run(*args)
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output
    assert r.output.strip().count("\n") == 0, r.output
    for path in written:
        assert not path.exists(), path


def test_encode_refuses_bad_parameters_keys_and_shapes_before_writing(tmp_path):
    import numpy as np
    import torch

    x = tmp_path / "x.npy"
    np.save(x, np.abs(np.random.default_rng(0).normal(size=(2, 8, 6, 6))).astype(np.float32))
    torch.save({"a": torch.rand(2, 3)}, tmp_path / "acts.pt")
    np.save(tmp_path / "deep.npy", np.zeros([1] * 40, np.float32))
    out = tmp_path / "x.azip"
    cases = [
        (["encode", str(x), "--codec", "dctcm", "-p", "budget=abc"], "error budget must be"),
        (["encode", str(x), "-p", "level=5"], "it takes k"),
        (["encode", str(x), "--codec", "ctx", "-p", "bits=4"], "clashes with --bits"),
        (["encode", str(x), "-p", "=3"], "key=value"),
        (["encode", str(tmp_path / "acts.pt"), "--key", "zz"], "no tensor 'zz'; it holds a"),
        (["encode", str(tmp_path / "deep.npy")], "at most 8 dimensions"),
        (["encode", str(x), "--codec", "nope"], "unknown codec"),
        (["encode", str(x), "--bits", "1"], "bit width"),
    ]
    for args, message in cases:
        _one_line_error([*args, "-o", str(out)], message, tmp_path, written=[out])


def test_info_and_decode_read_a_file_only_as_far_as_its_framing_allows(tmp_path):
    import numpy as np

    x = tmp_path / "x.npy"
    np.save(x, np.abs(np.random.default_rng(0).normal(size=(2, 8, 6, 6))).astype(np.float32))
    stream = tmp_path / "x.azip"
    assert run("encode", str(x), "-o", str(stream)).exit_code == 0
    big = tmp_path / "big.azip"  # a 3 GB file (sparse on disk) that starts like a stream
    with open(big, "wb") as f:
        f.write(stream.read_bytes())
        f.truncate(3 << 30)
    out = tmp_path / "y.npy"
    _one_line_error(["info", "/dev/zero"], "bad magic", tmp_path)
    _one_line_error(["info", str(big)], "framing says", tmp_path)
    _one_line_error(["decode", str(big), "-o", str(out)], "framing says", tmp_path, written=[out])
    _one_line_error(["decode", str(stream), "-o", str(out), "--max-size", "100"], "max-size", tmp_path,
                    written=[out])
    r = run("info", str(stream))
    assert r.exit_code == 0 and "shape (2, 8, 6, 6)" in r.output
    assert run("decode", str(stream), "-o", str(out)).exit_code == 0 and np.load(out).shape == (2, 8, 6, 6)


def test_reading_a_stream_header_does_not_load_torch(tmp_path):
    """`actzip --help`, `codecs` and `info` start in well under 2 s because they never import torch."""
    import numpy as np

    import actzip

    stream = tmp_path / "x.azip"
    stream.write_bytes(actzip.dumps(np.ones((2, 3), np.float32)))
    code = ("import sys; from actzip.cli import app; from typer.testing import CliRunner; "
            f"r = [CliRunner().invoke(app, a) for a in (['--help'], ['codecs'], ['info', {str(stream)!r}])]; "
            "assert all(x.exit_code == 0 for x in r), [x.output for x in r]; print('torch' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "False", p.stdout + p.stderr


def test_version_and_short_help():
    from actzip import __version__

    r = run("--version")
    assert r.exit_code == 0 and r.output.strip() == f"actzip {__version__}"
    r = run("encode", "-h")
    assert r.exit_code == 0 and "--codec" in r.output


def test_train_options_are_the_fields_of_the_training_config():
    """The CLI builds TrainConfig from its options by name: every field but the measurement's bits
    and codecs is an option, and every option but the run folder and --resume is a field."""
    import dataclasses
    import inspect

    from actzip.cli import train
    from actzip.train import TrainConfig

    options = set(inspect.signature(train).parameters) - {"out_dir", "resume"}
    assert options == {f.name for f in dataclasses.fields(TrainConfig)} - {"bits", "codecs"}


def test_analyze_options_cover_the_fields_of_the_analysis_config():
    """The CLI builds AnalyzeConfig from its options by name: each field is an option."""
    import dataclasses
    import inspect

    from actzip.analysis import AnalyzeConfig
    from actzip.cli import analyze

    options = set(inspect.signature(analyze).parameters)
    assert {f.name for f in dataclasses.fields(AnalyzeConfig)} <= options


def test_evaluate_options_cover_the_fields_of_the_evaluation_config():
    """The CLI builds EvaluateConfig from its options by name: each field is an option, but the
    codec settings, which come from the repeated --param."""
    import dataclasses
    import inspect

    from actzip.cli import evaluate
    from actzip.lossy.config import EvaluateConfig

    options = set(inspect.signature(evaluate).parameters)
    assert {f.name for f in dataclasses.fields(EvaluateConfig)} - {"codec_params"} <= options
    # an older flag reaches its field under the field's name: the config's own check answers
    r = runner.invoke(app, ["evaluate", "--by-sensitivity", "--codec", "zvc"])
    assert r.exit_code == 2 and "by sensitivity needs the dctcm codec" in r.output


def test_plot_draws_rate_against_distortion_across_evaluate_runs(tmp_path):
    import json

    for i, compression in enumerate((2.0, 3.0, 4.0)):
        report = {"codec": "dctcm", "codec_params": {"coder": "ctxrans"}, "bits": 8, "compression": compression,
                  "agreement": {"compressed": 1 - 0.01 * i}, "output_error": {"compressed": 1e-3 * (i + 1)}}
        (tmp_path / f"e{i}.json").write_text(json.dumps(report))
    out = tmp_path / "rd.png"
    r = run("plot", *[str(tmp_path / f"e{i}.json") for i in range(3)], "--out", str(out))
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "bad.json").write_text(json.dumps({"totals": {}}))
    r = run("plot", str(tmp_path / "bad.json"), "--out", str(tmp_path / "no.png"))
    assert r.exit_code == 2 and "not an `actzip evaluate` report" in r.output and not (tmp_path / "no.png").exists()
    r = run("plot", str(tmp_path / "missing.json"), "--out", str(tmp_path / "no.png"))
    assert r.exit_code == 2 and "cannot read" in r.output
