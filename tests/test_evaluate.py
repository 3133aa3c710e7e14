import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from actzip.analysis import AnalyzeConfig, calibrate
from actzip.errors import ActzipError
from actzip.lossy.agreement import agreement_chance
from actzip.lossy.config import EvaluateConfig
from actzip.lossy.evaluate import evaluate
from actzip.lossy.planner import planner
from actzip.quant import fake_quantize
from actzip.sites import capture


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 144, 10)).eval()


def _images(model, quantized_labels: bool):
    """40 random images labelled with the 3-bit quantization-only model's prediction (or the float one's)."""
    x = torch.rand(40, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    data = TensorDataset(x, torch.zeros(40, dtype=torch.long))
    if not quantized_labels:
        with torch.no_grad():
            return TensorDataset(x, model(x).argmax(1))
    sites, quantizers = calibrate(model, data, AnalyzeConfig(bits=(3,), calibration_images=64, codecs=()))
    with capture(model, lambda site, m, a: fake_quantize(a, quantizers[site.name][3])), torch.no_grad():
        return TensorDataset(x, model(x).argmax(1))


@pytest.mark.parametrize("codec", ["zvc", "seg", "ctx"])
def test_lossless_codecs_reproduce_the_quantization_only_predictions(codec):
    model = _net()
    report = evaluate(model, _images(model, quantized_labels=True), EvaluateConfig(codec=codec, bits=3))
    assert report["top1"]["compressed"] == 1.0 == report["top1"]["quantized"]
    assert report["top1"]["float"] < 1.0  # 3 bits change predictions, so the test sees where they come from
    assert report["agreement"]["compressed"] == report["agreement"]["quantized"]
    assert all(s["relative_error"] == 0.0 for s in report["sites"])
    assert report["compression"] > 1.0


def test_a_lossy_budget_bounds_the_first_sites_error_and_buys_compression():
    model = _net()
    data = _images(model, quantized_labels=False)
    lossless = evaluate(model, data, EvaluateConfig(codec="zvc", bits=8))
    reports = {b: evaluate(model, data, EvaluateConfig(codec="dctcm", bits=8, codec_params={"budget": b}))
               for b in (1e-3, 5e-2)}
    for budget, report in reports.items():
        # the first site sees exactly the calibration activations (all 40 images, fully sampled)
        assert 0 < report["sites"][0]["relative_error"] <= budget
        assert report["sites"][0]["codec"]["id"] == "dctcm"
    assert lossless["compression"] < reports[1e-3]["compression"] < reports[5e-2]["compression"]


def test_bad_settings_fail_before_any_work():
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        EvaluateConfig(codec="dctcm", codec_params={"budget": 1.5})
    with pytest.raises(Exception, match="unknown codec"):
        EvaluateConfig(codec="nope")


def test_cli_evaluate_reports_and_refuses_bad_settings(tmp_path):
    from typer.testing import CliRunner

    from actzip.cli import app

    bad = CliRunner().invoke(app, ["evaluate", "-p", "group=3", "--out", str(tmp_path / "e.json")])
    assert bad.exit_code == 2 and "power of two" in bad.output
    assert not (tmp_path / "e.json").exists()
    np.testing.assert_equal(CliRunner().invoke(app, ["evaluate", "-p", "budget"]).exit_code, 2)
    bad = CliRunner().invoke(app, ["evaluate", "--codec", "zvc", "--output-budget", "0.1"])
    assert bad.exit_code == 2 and "needs the dctcm codec" in bad.output
    bad = CliRunner().invoke(app, ["evaluate", "--channel-weights", "-p", "coder=rans"])
    assert bad.exit_code == 2 and "channel weights need an output budget" in bad.output
    bad = CliRunner().invoke(app, ["evaluate", "--transform", "--output-budget", "0.1", "-p", "coder=rans"])
    assert bad.exit_code == 2 and "needs channel weights" in bad.output


def test_cli_evaluate_with_an_output_budget_writes_its_report(tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from actzip.cli import app

    for i in range(4):
        Image.new("RGB", (48, 40), (40 * i, 100, 20 * i)).save(tmp_path / f"{i}.png")
    # TinyNet's weights come from the global generator: seeded, the test does not depend on the
    # tests run before it (the split of the budget by linearized sensitivity overshoots on some nets)
    torch.manual_seed(0)
    r = CliRunner().invoke(app, ["evaluate", "--model", "tests.conftest:TinyNet", "--images", str(tmp_path),
                                 "--budget", "output:0.01", "--out", str(tmp_path / "e.json")])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["output_budget"] == 0.01 and report["output_error"]["compressed"] <= 0.01
    assert all("sensitivity" in s for s in report["sites"]) and "output error" in r.output
    bad = CliRunner().invoke(app, ["evaluate", "--model", "tests.conftest:TinyNet", "--images", str(tmp_path),
                                   "--budget", "volume:0.1", "--out", str(tmp_path / "x" / "e.json")])
    assert bad.exit_code == 2 and "site:E, output:E or agreement:A" in bad.output and not (tmp_path / "x").exists()
    r = CliRunner().invoke(app, ["evaluate", "--model", "tests.conftest:TinyNet", "--images", str(tmp_path),
                                 "--output-budget", "0.01", "--channel-weights", "-p", "coder=ctxrans",
                                 "--out", str(tmp_path / "w.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "w.json").read_text())["channel_weights"]


def test_cli_evaluate_with_an_agreement_target_calibrates_on_other_images(tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from actzip.cli import app

    for folder, shade in (("eval", 40), ("calib", 90)):
        (tmp_path / folder).mkdir()
        for i in range(4):
            Image.new("RGB", (48, 40), (shade + 20 * i, 100, 30 * i)).save(tmp_path / folder / f"{i}.png")
    r = CliRunner().invoke(app, ["evaluate", "--model", "tests.conftest:TinyNet", "--images", str(tmp_path / "eval"),
                                 "--calibrate-on", str(tmp_path / "calib"), "--calibration-images", "3",
                                 "--agreement", "0.9", "--agreement-estimate", "margin", "--out", str(tmp_path / "e.json")])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["images"] == 4 and report["agreement_search"]["calibration_images"] == 3
    assert report["agreement_search"]["estimate"] == "margin"
    assert "calibration images" in r.output and "expected from the margins" in r.output
    bad = CliRunner().invoke(app, ["evaluate", "--agreement", "0.9", "--output-budget", "0.1"])
    assert bad.exit_code == 2 and "agreement target needs" in bad.output
    bad = CliRunner().invoke(app, ["evaluate", "--agreement", "0.9", "--agreement-estimate", "vote"])
    assert bad.exit_code == 2 and "agreement estimate must be one of count, margin" in bad.output


def test_an_output_budget_is_split_by_sensitivity_and_bounds_the_output_error():
    model = _net()
    data = _images(model, quantized_labels=False)
    tight, loose = (evaluate(model, data, EvaluateConfig(codec="dctcm", bits=8, output_budget=b)) for b in (1e-3, 3e-2))
    for budget, report in ((1e-3, tight), (3e-2, loose)):
        assert report["output_error"]["quantized"] <= report["output_error"]["compressed"] <= budget
        for site in report["sites"]:  # every site within what it was given
            assert site["sensitivity"] > 0 and site["relative_error"] <= site["budget"] * (1 + 1e-6)
    assert tight["compression"] < loose["compression"]


def test_a_site_whose_error_mostly_vanishes_downstream_gets_the_larger_budget():
    model = _net()
    with torch.no_grad():  # the second conv reads only channel 0 of its input, which holds most of the energy;
        model[0].weight[0] *= 10  # the (uniform) requantization noise of the other 15 channels never reaches
        model[0].bias[0] *= 10  # the output, so relative error at that site costs little
        model[2].weight[:, 1:] = 0
    report = evaluate(model, _images(model, quantized_labels=False),
                      EvaluateConfig(codec="dctcm", bits=8, output_budget=1e-2))
    conv_input, linear_input = report["sites"]
    assert conv_input["sensitivity"] < linear_input["sensitivity"] / 2
    assert conv_input["budget"] > linear_input["budget"]


def test_output_budget_needs_dctcm_without_a_site_budget():
    for bad in (dict(codec="zvc", output_budget=0.1), dict(codec="dctcm", codec_params={"budget": 0.1}, output_budget=0.1),
                dict(codec="dctcm", output_budget=1.0)):
        with pytest.raises(ValueError, match="output"):
            EvaluateConfig(**bad)


def test_a_site_budget_spread_by_sensitivity_keeps_its_estimated_output_error():
    model = _net()
    data = _images(model, quantized_labels=False)
    report = evaluate(model, data, EvaluateConfig(codec="dctcm", bits=8, codec_params={"budget": 1e-2},
                                                  budget_by_sensitivity=True))
    sites = report["sites"]
    assert report["budget_by_sensitivity"] and all(s["sensitivity"] > 0 for s in sites)
    spent = sum(s["sensitivity"] * s["budget"] for s in sites)
    assert spent <= 1e-2 * sum(s["sensitivity"] for s in sites) * (1 + 1e-6)
    assert len({round(s["budget"], 9) for s in sites}) > 1  # not the same budget everywhere
    with pytest.raises(ValueError, match="per-site budget"):
        EvaluateConfig(codec="dctcm", budget_by_sensitivity=True)


def test_an_agreement_target_finds_the_output_budget_that_keeps_it():
    model = _net()
    data = _images(model, quantized_labels=False)  # labels = the float model's predictions
    strict, loose = (evaluate(model, data, EvaluateConfig(codec="dctcm", bits=8, agreement=a)) for a in (0.95, 0.6))
    for target, report in ((0.95, strict), (0.6, loose)):
        found = report["agreement_search"]
        assert report["agreement_target"] == target and found["calibration_images"] == 40
        assert found["calibration_agreement"] >= target
        # calibrated on the evaluated images, so the compressed model keeps the target on them too
        assert report["agreement"]["compressed"] >= target
    assert strict["agreement_search"]["output_budget"] < loose["agreement_search"]["output_budget"]
    assert strict["compression"] < loose["compression"]
    # at 0.6, choose took a DCT setting at the second site that broke the target: back to the pixel domain
    assert loose["agreement_search"]["dct_kept"] is False
    assert not any(s["codec"]["transform"] for s in loose["sites"])


def test_calibration_images_can_be_a_separate_set():
    model = _net()
    data = _images(model, quantized_labels=False)
    same = evaluate(model, data, EvaluateConfig(codec="zvc", bits=4))
    assert evaluate(model, data, EvaluateConfig(codec="zvc", bits=4), calibration=data) == same
    # quantizers calibrated on images 8x brighter have 8x coarser steps for these ones
    bright = TensorDataset(data.tensors[0] * 8, data.tensors[1])
    coarse = evaluate(model, data, EvaluateConfig(codec="zvc", bits=4), calibration=bright)
    assert coarse["agreement"]["quantized"] < same["agreement"]["quantized"]
    with pytest.raises(ValueError, match="agreement"):
        EvaluateConfig(codec="dctcm", bits=8, agreement=1.0)
    with pytest.raises(ValueError, match="agreement target needs"):
        EvaluateConfig(codec="dctcm", bits=8, output_budget=0.1, agreement=0.9)


def test_channel_weights_spend_the_error_on_the_channels_the_output_does_not_read():
    model = _net()
    with torch.no_grad():
        model[2].weight[:, 1:] = 0  # the second conv reads channel 0 of its input only
    data = _images(model, quantized_labels=False)
    plain, weighted = (evaluate(model, data, EvaluateConfig(codec="dctcm", bits=8, output_budget=1e-3,
                                                            codec_params={"coder": "rans"}, channel_weights=w))
                       for w in (False, True))
    steps = weighted["sites"][0]["codec"]["channel_steps"]
    assert len(steps) == 16 and steps[0] < min(steps[1:])
    assert weighted["output_error"]["compressed"] <= 1e-3
    assert weighted["compression"] > 1.2 * plain["compression"]
    found = evaluate(model, data, EvaluateConfig(codec="dctcm", bits=8, agreement=0.95, codec_params={"coder": "rans"},
                                                 channel_weights=True))
    assert found["agreement"]["compressed"] >= 0.95 and found["compression"] > plain["compression"]
    for bad in (dict(codec_params={"coder": "rans"}), dict(output_budget=0.1, codec_params={"coder": "zvc"}),
                dict(output_budget=0.1, codec_params={"coder": "rans", "transform": True})):
        with pytest.raises(ValueError, match="channel weights"):
            EvaluateConfig(codec="dctcm", channel_weights=True, **bad)


def _expanding_net():
    """A depthwise conv that reads a ReLU of a 1x1 conv from 4 channels: 32 channels on a 4-dimensional subspace."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 32, 1), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.ReLU(), nn.Flatten(),
                         nn.Linear(32 * 144, 10)).eval()


def test_a_site_of_few_underlying_channels_takes_its_fitted_transform():
    model = _expanding_net()
    data = _images(model, quantized_labels=False)
    pixel, learned = (evaluate(model, data, EvaluateConfig(codec="dctcm", bits=8, output_budget=1e-3,
                                                           codec_params={"coder": "ctxrans"}, channel_weights=True,
                                                           transform=t))
                      for t in (False, True))
    kinds = [s["codec"]["id"] for s in learned["sites"]]
    assert kinds[1] == "klt" and kinds[2] == "requant"  # a Linear input has no channels to transform
    assert learned["sites"][1]["codec"]["channels"] == 32 and learned["side_bytes"] == 32 * 32 * 2 + 2 * 32 * 4
    assert learned["compression"] > 1.1 * pixel["compression"]
    assert learned["output_error"]["compressed"] <= 1e-3 and pixel["side_bytes"] == 0
    with pytest.raises(ValueError, match="channel weights"):
        EvaluateConfig(codec="dctcm", output_budget=0.1, codec_params={"coder": "rans"}, transform=True)


def test_a_planner_hands_out_the_codecs_evaluate_chooses_for_each_budget():
    model = _expanding_net()
    data = _images(model, quantized_labels=False)
    config = EvaluateConfig(codec="dctcm", bits=8, output_budget=1e-3, codec_params={"coder": "ctxrans"},
                            channel_weights=True, transform=True)
    codecs_for = planner(model, data, config)
    ratios = []
    for budget in (1e-3, 1e-2):
        direct = evaluate(model, data, replace(config, output_budget=budget), calibration=data)
        swept = evaluate(model, data, config, calibration=data, coders=codecs_for(budget))
        assert swept["compression"] == direct["compression"] and swept["output_error"] == direct["output_error"]
        assert [s["codec"] for s in swept["sites"]] == [s["codec"] for s in direct["sites"]]
        ratios.append(swept["compression"])
    assert ratios[1] > ratios[0]
    with pytest.raises(ValueError, match="channel weights"):
        planner(model, data, EvaluateConfig(codec="dctcm", output_budget=0.1))
    with pytest.raises(ActzipError, match="one per site"):
        evaluate(model, data, config, coders={})


@pytest.mark.parametrize("on", ["every logit", "mostly the top two"])
def test_agreement_chance_matches_the_flip_rate_of_gaussian_noise_of_that_power(on):
    rng = np.random.default_rng(0)
    margins = np.array([0.1, 1.0, 3.0])
    reference = np.full((3, 50), -20.0)
    reference[:, 0], reference[:, 1] = 5.0, 5.0 - margins
    draws = 4000
    noise = rng.normal(0, 1.0, (draws, 3, 50))
    if on == "mostly the top two":  # the noise leans on the classes that matter: kappa ~ 8
        noise[:, :, 2:] *= 0.3
    outputs = (reference[None] + noise).reshape(-1, 50)
    kept_rate = (outputs.argmax(1) == 0).reshape(draws, 3).mean(0)
    chance = agreement_chance(np.tile(reference, (draws, 1)), outputs).reshape(draws, 3).mean(0)
    np.testing.assert_allclose(chance, kept_rate, atol=0.03)
    assert 0.5 < chance[0] < chance[1] < chance[2] < 1
    assert (agreement_chance(reference, reference) == 1.0).all()
    tie = np.array([[1.0, 1.0, 0.0]])
    assert agreement_chance(tie, tie + [[0.0, 0.1, 0.0]])[0] == 0.5  # no margin: a coin toss


def test_the_report_expects_agreement_from_margins_and_the_search_can_use_it():
    model = _net()
    data = _images(model, quantized_labels=False)
    lossless = evaluate(model, data, EvaluateConfig(codec="zvc", bits=8))
    assert lossless["expected_agreement"]["compressed"] == lossless["expected_agreement"]["quantized"] < 1.0
    config = EvaluateConfig(codec="dctcm", bits=8, agreement=0.9, agreement_estimate="margin",
                            codec_params={"coder": "ctxrans"}, channel_weights=True)
    found = evaluate(model, data, config)
    search = found["agreement_search"]
    assert search["estimate"] == "margin" and 0.9 <= search["calibration_agreement"] < 0.95
    # calibrated on the evaluated images: what the search expected is what the report expects
    assert found["expected_agreement"]["compressed"] == pytest.approx(search["calibration_agreement"], abs=1e-6)
    assert found["expected_agreement"]["compressed"] < found["expected_agreement"]["quantized"]
    # a planner finds the same budget and codecs
    budget, codecs_found, reached = planner(model, data, replace(config, agreement=None, output_budget=0.1)
                                            ).for_agreement(0.9, "margin")
    assert (budget, reached) == (search["output_budget"], search["calibration_agreement"])
    assert [c.describe() for c in codecs_found.values()] == [s["codec"] for s in found["sites"]]
    with pytest.raises(ValueError, match="agreement estimate"):
        replace(config, agreement_estimate="vote")


def test_typed_budgets_set_the_evaluation_and_check_themselves():
    from dataclasses import replace

    from actzip.lossy import AgreementTarget, OutputBudget, SiteBudget, parse_budget

    assert parse_budget("site:1e-3") == SiteBudget(1e-3)
    assert parse_budget("site:0.01:sensitivity") == SiteBudget(0.01, by_sensitivity=True)
    assert parse_budget("output:0.1") == OutputBudget(0.1)
    assert parse_budget("agreement:0.98:margin") == AgreementTarget(0.98, estimate="margin")
    for bad in ("output", "output:x", "output:1.5", "volume:0.1", "site:0.1:margin", "agreement:0.98:guess"):
        with pytest.raises(ValueError):
            parse_budget(bad)
    config = EvaluateConfig(codec="dctcm", budget=OutputBudget(0.05), granularity="channel", allow_klt=True)
    assert (config.output_budget, config.channel_weights, config.transform) == (0.05, True, True)
    assert replace(config, limit=4).output_budget == 0.05  # replace passes both forms, which agree
    site = EvaluateConfig(codec="dctcm", budget=SiteBudget(0.01, by_sensitivity=True))
    assert site.codec_params["budget"] == 0.01 and site.budget_by_sensitivity
    target = EvaluateConfig(codec="dctcm", budget=AgreementTarget(0.97, "margin"))
    assert (target.agreement, target.agreement_estimate) == (0.97, "margin")
    with pytest.raises(ValueError, match="once"):
        EvaluateConfig(codec="dctcm", budget=OutputBudget(0.05), output_budget=0.1)
    with pytest.raises(ValueError, match="granularity"):
        EvaluateConfig(codec="dctcm", granularity="pixel")
