import json

import numpy as np
import pytest
import torch

from actzip import AnalyzeConfig, analyze, codecs, measure
from actzip.quant import QuantParams, code_dtype, quantize
from actzip.report import write_report
from actzip.sites import capture


def test_report_on_tiny_model_matches_direct_computation(tiny, random_images):
    config = AnalyzeConfig(bits=(4, 8), batch_size=10, codecs=tuple(codecs.names()))  # one batch, every codec
    report = analyze(tiny, random_images, config, model_name="tiny")
    assert [s["name"] for s in report["sites"]] == ["conv2", "conv2#2", "fc"]
    # recompute every site directly from the whole batch
    seen = {}
    with capture(tiny, lambda site, m, x: seen.setdefault(site.name, x.clone())), torch.no_grad():
        tiny(random_images.x)
    for s in report["sites"]:
        x = seen[s["name"]]
        assert s["numel"] == x.numel()
        assert s["zero_fraction"] == pytest.approx((x == 0).float().mean().item())
        for b in ("4", "8"):
            p = s["quantizer"][b]
            assert p["signed"] == bool((x < 0).any())
            q = quantize(x, QuantParams.from_dict(p))
            codes = q.numpy().astype(code_dtype(int(b), p["signed"]))
            for name in codecs.names():  # the report's bits are the real stream lengths
                assert s["bits"][name][b] == 8 * len(codecs.get(name, bits=int(b)).encode(codes))
            _, counts = np.unique(q.numpy(), return_counts=True)
            prob = counts / counts.sum()
            assert s["bits"]["entropy"][b] == pytest.approx(-(counts * np.log2(prob)).sum())
    t = report["totals"]
    assert t["numel"] == sum(s["numel"] for s in report["sites"])
    assert t["theoretical_speedup"] == pytest.approx(t["macs"] / t["effective_macs"])
    assert t["compression"]["zvc"]["8"] == pytest.approx(
        t["numel"] * 8 / sum(s["bits"]["zvc"]["8"] for s in report["sites"]))
    assert report["codecs"]["streams"] == codecs.names()


def test_batching_does_not_change_the_result(tiny, random_images):
    a = analyze(tiny, random_images, AnalyzeConfig(bits=(8,), batch_size=1, codecs=()))
    b = analyze(tiny, random_images, AnalyzeConfig(bits=(8,), batch_size=10, codecs=()))
    # conv kernels differ by batch size in the last float bits, so a value may cross a rounding edge
    assert [s["name"] for s in a["sites"]] == [s["name"] for s in b["sites"]]
    for sa, sb in zip(a["sites"], b["sites"]):
        assert (sa["numel"], sa["macs"]) == (sb["numel"], sb["macs"])
        assert sa["effective_macs"] == pytest.approx(sb["effective_macs"], rel=1e-3)
        assert sa["bits"]["entropy"]["8"] == pytest.approx(sb["bits"]["entropy"]["8"], rel=1e-3)
    assert a["totals"]["compression"]["entropy"]["8"] == pytest.approx(b["totals"]["compression"]["entropy"]["8"],
                                                                      rel=1e-3)


def test_limit_and_calibration_subset(tiny, random_images):
    m = measure(tiny, random_images, AnalyzeConfig(bits=(8,), limit=4, calibration_images=2))
    assert m.images == 4
    assert m.stats["conv2"].numel == 4 * 8 * 12 * 12


def test_memory_does_not_hold_activations(tiny, random_images):
    """Stats are O(1) in the number of images: their arrays are the same size for 2 and 10 images."""
    def sizes(limit):
        m = measure(tiny, random_images, AnalyzeConfig(bits=(8, 16), limit=limit))
        return sum(h.counts.nbytes for s in m.stats.values() for h in s.codes.values())
    assert sizes(2) == sizes(10)


def test_unknown_codec_fails_before_work():
    with pytest.raises(Exception, match="unknown codec"):
        AnalyzeConfig(codecs=("nope",))


def test_report_files(tiny, random_images, tmp_path):
    report = analyze(tiny, random_images, AnalyzeConfig(bits=(8, 16)))
    paths = write_report(report, tmp_path / "out")
    assert {p.name for p in paths} == {"report.json", "report.md", "zero_fraction.png", "compression_8bit.png",
                                       "compression_16bit.png"}
    loaded = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(loaded["sites"][0]) >= {"name", "module", "shape", "numel", "zero_fraction", "macs",
                                       "effective_macs", "bits"}
    assert set(loaded["totals"]["compression"]["zvc"]) == {"8", "16"}
    assert (tmp_path / "out" / "zero_fraction.png").read_bytes()[:4] == b"\x89PNG"
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_a_chart_shows_at_most_six_codecs_the_best_first(tiny, random_images):
    from actzip import codecs
    from actzip.report import chart_codecs

    report = analyze(tiny, random_images, AnalyzeConfig(bits=(8,), limit=2, codecs=tuple(codecs.names())))
    shown = chart_codecs(report, "8")
    ratios = report["totals"]["compression"]
    assert len(shown) == 6 < len(ratios)
    assert min(ratios[c]["8"] for c in shown) >= max(ratios[c]["8"] for c in ratios if c not in shown)


@pytest.mark.parametrize("calibration,per_channel", [("percentile", False), ("max", True)])
def test_other_calibrations_give_consistent_codes(tiny, random_images, calibration, per_channel):
    config = AnalyzeConfig(bits=(8,), calibration=calibration, per_channel=per_channel, percentile=99.0)
    m = measure(tiny, random_images, config)
    seen = {}
    with capture(tiny, lambda site, mod, x: seen.setdefault(site.name, x.clone())), torch.no_grad():
        tiny(random_images.x)
    for site in m.sites:
        p = m.quantizers[site.name][8]
        assert (p.axis is not None) == per_channel
        if per_channel:
            assert len(p.scale) == site.shape[0 if len(site.shape) == 3 else -1]
        q = quantize(seen[site.name], p)
        expected = torch.bincount((q - p.qmin).flatten().long(), minlength=p.qmax - p.qmin + 1).numpy()
        assert np.array_equal(m.stats[site.name].codes[8].counts, expected)
    if calibration == "percentile":  # clipping at the 99th percentile saturates about 1 % of values
        h = m.stats["conv2"].codes[8]
        assert 0.001 < h.counts[-1] / h.numel < 0.05
