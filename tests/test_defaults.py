"""What a newcomer gets without settings: codecs that compress real maps, and reports that say
when the network is untrained or the images have no labels."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from actzip import codecs, models
from actzip.analysis import AnalyzeConfig, analyze
from actzip.cli import app
from actzip.data import open_images
from actzip.sites import capture


@pytest.fixture(scope="module")
def lite0_report():
    """The default analysis of pretrained EfficientNet-Lite0 over two bundled photos."""
    if not models.has_trained_weights("efficientnet-lite0"):
        pytest.skip("EfficientNet-Lite0's weights are not installed")
    photos = open_images("photos", models.preprocessing("efficientnet-lite0"))
    config = AnalyzeConfig(limit=2, calibration_images=2)
    return analyze(models.load("efficientnet-lite0"), photos, config)


def test_every_default_codec_compresses_real_maps(lite0_report):
    ratios = lite0_report["totals"]["compression"]
    assert set(AnalyzeConfig().codecs) <= set(ratios)
    for codec, per_bits in ratios.items():
        for b, r in per_bits.items():
            assert r > 1.0, (codec, b, r)


def test_a_lossy_codec_without_settings_compresses_real_maps():
    if not models.has_trained_weights("efficientnet-lite0"):
        pytest.skip("EfficientNet-Lite0's weights are not installed")
    photos = open_images("photos", models.preprocessing("efficientnet-lite0"))
    model, maps = models.load("efficientnet-lite0"), []

    def keep(site, module, x):
        maps.append(x.detach().clone())
        return x

    with torch.no_grad(), capture(model, keep):
        model(torch.stack([photos[i][0] for i in range(2)]))
    raw = coded = 0
    for x in maps[::4]:  # every fourth site, early to late
        codes = np.round(255 * x.clamp(min=0).numpy() / max(float(x.max()), 1e-9)).astype(np.uint8)
        raw, coded = raw + codes.size, coded + len(codecs.get("dctcm").encode(codes))
    assert raw / coded > 1.5


def _folder(path, n=3):
    path.mkdir(exist_ok=True)
    for i in range(n):
        Image.new("RGB", (40, 36), (60 * i, 90, 30 * i)).save(path / f"{i}.png")
    return path


def test_an_untrained_model_is_named_as_such(tmp_path):
    images, out = _folder(tmp_path / "img"), tmp_path / "run"
    r = CliRunner().invoke(app, ["analyze", "--model", "resnet20", "--images", str(images), "--codecs", "zvc",
                                 "--bits", "8", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "random weights" in r.output
    assert "measure: 3/3 (" in r.output  # a plain progress line where the output is not a terminal
    assert json.loads((out / "report.json").read_text())["weights"] == "random (untrained)"
    assert "random weights" in (out / "report.md").read_text().splitlines()[0]


def test_report_tables_fit_120_columns(lite0_report, tmp_path):
    from actzip.report import markdown

    lite0_report["model"], lite0_report["image_source"] = "efficientnet-lite0", "photos"
    assert max(len(line) for line in markdown(lite0_report).splitlines()) <= 120


def test_images_without_labels_say_so_instead_of_zero_accuracy(tmp_path):
    images = _folder(tmp_path / "img")
    torch.manual_seed(0)
    r = CliRunner().invoke(app, ["evaluate", "--model", "tests.conftest:TinyNet", "--images", str(images),
                                 "--codec", "zvc", "--out", str(tmp_path / "e.json")])
    assert r.exit_code == 0, r.output
    assert "no labels" in r.output and not re.search(r"(?<![\d.])0\.00 %", r.output)
    assert json.loads((tmp_path / "e.json").read_text())["top1"]["float"] is None


def test_analyze_takes_a_plain_tensor_batch():
    from tests.conftest import TinyNet

    torch.manual_seed(0)
    report = analyze(TinyNet(), torch.rand(5, 3, 12, 12), AnalyzeConfig(bits=(8,), codecs=("zvc",)))
    assert report["images"] == 5 and report["image_source"] == "tensor"


def test_cli_preprocessing_for_a_user_model(tmp_path):
    images, out = _folder(tmp_path / "img"), tmp_path / "run"
    args = ["analyze", "--model", "tests.conftest:TinyNet", "--images", str(images), "--codecs", "zvc", "--bits", "8",
            "--out", str(out)]
    r = CliRunner().invoke(app, args + ["--size", "20", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    assert report["preprocess"]["crop"] == 20 and report["preprocess"]["std"] == [0.25] * 3
    assert report["sites"][0]["shape"][-1] == 20
    for bad, message in ((["--mean", "a,b,c"], "comma-separated"), (["--std", "0,1,1"], "all > 0"),
                         (["--mean", "0.5"], "as many values")):
        r = CliRunner().invoke(app, args + bad)
        assert r.exit_code == 2 and message in r.output, r.output
