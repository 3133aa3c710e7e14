import json
import math

import pytest
import torch
import torch.nn.functional as F

from actzip.cli import app
from conftest import write_two_class_folder
from actzip.errors import ActzipError
from actzip.train import TrainConfig, train, trained_model
from typer.testing import CliRunner


@pytest.fixture(scope="module")
def folder_dataset(tmp_path_factory):
    return write_two_class_folder(tmp_path_factory.mktemp("ds"))


def config(ds, **kw):
    base = dict(model="resnet20", width=0.25, dataset=str(ds), epochs=2, batch_size=8, eval_images=16,
                codecs=("zvc", "ctx"), l1=1e-3)
    base.update(kw)
    return TrainConfig(**base)


def test_training_writes_a_run_and_learns(folder_dataset, tmp_path):
    # 36 steps: enough for BatchNorm running statistics to settle, so eval mode is reliable
    report = train(config(folder_dataset, epochs=3, lr=0.02, batch_size=4), tmp_path / "run")
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.json", "metrics.jsonl", "checkpoint.pt", "weights.pt", "report.json", "report.md"} <= files
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[-1])["epoch"] == 3
    assert report["training"]["top1"] >= 0.9  # dark vs bright is easy
    assert set(report["totals"]["compression"]) >= {"zvc", "ctx", "entropy"}
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 3
    model, again, sets = trained_model(tmp_path / "run")  # the run loads back as it was trained
    assert again == TrainConfig.from_dict(report["training"]["config"]) and len(sets.test) > 0
    weights = torch.load(tmp_path / "run" / "weights.pt", weights_only=True)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_resume_reaches_the_uninterrupted_result(folder_dataset, tmp_path):
    train(config(folder_dataset), tmp_path / "whole")

    def stop_in_epoch_two(phase, done, total, info):
        if phase.startswith("epoch 2"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config(folder_dataset), tmp_path / "cut", progress=stop_in_epoch_two)
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    train(config(folder_dataset), tmp_path / "cut", resume=True)
    a = torch.load(tmp_path / "whole" / "weights.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "weights.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_runs(folder_dataset, tmp_path):
    train(config(folder_dataset, epochs=1), tmp_path / "run")
    with pytest.raises(ActzipError, match="already holds a run"):
        train(config(folder_dataset, epochs=1), tmp_path / "run")
    with pytest.raises(ActzipError, match="not a training run"):
        train(config(folder_dataset), tmp_path / "nothing", resume=True)
    assert not (tmp_path / "nothing").exists()
    torch.save(torch.nn.Linear(3, 3).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ActzipError, match="do not fit"):
        train(config(folder_dataset, init=str(tmp_path / "other.pt")), tmp_path / "ft")
    with pytest.raises(ActzipError, match="became"):
        train(config(folder_dataset, lr=1e30, epochs=1), tmp_path / "nan")
    with pytest.raises(ActzipError, match="unknown dataset"):
        train(config("no-such-set"), tmp_path / "x")


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(folder_dataset, tmp_path, monkeypatch):
    in_epoch_two = []

    def note_epoch(phase, done, total, info):
        in_epoch_two.append(phase.startswith("epoch 2"))

    cross_entropy = F.cross_entropy
    monkeypatch.setattr(F, "cross_entropy",
                        lambda *a, **k: cross_entropy(*a, **k) * (math.nan if any(in_epoch_two) else 1.0))
    with pytest.raises(ActzipError, match="became nan at epoch 2, step 2"):
        train(config(folder_dataset), tmp_path / "run", progress=note_epoch)
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


def test_fine_tune_from_weights_with_fatrelu(folder_dataset, tmp_path):
    train(config(folder_dataset, epochs=1, l1=0.0), tmp_path / "base")
    report = train(config(folder_dataset, epochs=1, l1=0.0, fatrelu=0.3, init=str(tmp_path / "base" / "weights.pt")),
                   tmp_path / "ft")
    base = json.loads((tmp_path / "base" / "report.json").read_text())["totals"]["zero_fraction"]
    assert report["totals"]["zero_fraction"] > base + 0.1


def test_distillation_follows_the_teacher_over_the_labels(folder_dataset, tmp_path):
    train(config(folder_dataset, epochs=3, lr=0.02, batch_size=4, l1=0.0), tmp_path / "base")
    weights = torch.load(tmp_path / "base" / "weights.pt", weights_only=True)
    for k in ("fc.weight", "fc.bias"):  # two classes: negated logits predict the other one
        weights[k] = -weights[k]
    torch.save(weights, tmp_path / "inverted.pt")
    tune = dict(epochs=2, lr=0.02, batch_size=4, l1=0.0, init=str(tmp_path / "inverted.pt"))
    labels = train(config(folder_dataset, **tune), tmp_path / "labels")
    teacher = train(config(folder_dataset, distill=1.0, **tune), tmp_path / "teacher")
    assert labels["training"]["top1"] >= 0.8  # the labels undo the inversion
    assert teacher["training"]["top1"] <= 0.2  # the (inverted) teacher keeps it
    with pytest.raises(ValueError, match="init"):
        config(folder_dataset, distill=0.5)


def test_cli_train(folder_dataset, tmp_path):
    r = CliRunner().invoke(app, ["train", "--dataset", str(folder_dataset), "--epochs", "1", "--batch-size", "8",
                                 "--width", "0.25", "--eval-images", "8", "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    assert "top-1" in r.output
    r = CliRunner().invoke(app, ["train", "--resume", "--out", str(tmp_path / "none")])
    assert r.exit_code == 2 and "not a training run" in r.output
