"""Training and fine-tuning with activation sparsity, one process (DDP comes with torchrun).

A run directory holds config.json, metrics.jsonl (one line per epoch), checkpoint.pt (the last
finished epoch: model, optimizer, schedule, RNG), and at the end weights.pt plus the analyze-style
report (report.json/.md and charts). Every file is written atomically, so a run killed at any
moment leaves a loadable checkpoint, and `resume=True` continues it to the same result as an
uninterrupted run: each epoch shuffles with a generator seeded from (seed, epoch).

A fine-tune can distil from the model it starts from (`distill` > 0): a frozen copy of the --init
weights, without penalty or masks, supplies soft targets, and the loss becomes
(1 - distill) * cross-entropy + distill * T^2 * KL(teacher || student) at temperature T = 4
(Hinton et al. 2015), which keeps the sparsified student close to what the dense model computed.
"""

from __future__ import annotations

import io
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler

from . import models
from .analysis import AnalyzeConfig, build_report, measure
from .data.training import TrainingSets, training_sets
from .dist import (all_reduce_sum, barrier, broadcast_module, global_batchnorm, init_from_env, is_main,
                   rank_and_world)
from .errors import ActzipError
from .fileio import atomic_write, writable_dir
from .report import write_report
from .sparsify import (FATReLU, Hoyer, L1, PixelMask, PixelMaskHandle, attach_fatrelu, attach_penalty,
                       attach_pixel_masks, calibrate_thresholds)

Progress = Callable[[str, int, int, dict], None]  # (phase, done, total, info)
SMALL_MODELS = ("resnet20", "resnet18", "mobilenet-v1")
DISTILL_TEMPERATURE = 4.0


@dataclass(frozen=True)
class TrainConfig:
    """A training or fine-tuning run with activation sparsity (`actzip train`).

    Args:
        model: a registered name, torchvision/<arch>, or module:factory.
        width: the width multiplier of the small models (None: the model's default).
        dataset: "fashion-mnist", "cifar10", or a folder with train/ and val/.
        data_root: where the dataset lives.
        download: allow downloading CIFAR-10.
        epochs: passes over the training set.
        batch_size: the global batch size (divided among the processes under torchrun).
        optimizer: "sgd" (Nesterov momentum) or "adamw", with a cosine schedule either way.
        lr: the learning rate (None: 0.05 for SGD, 1e-3 for AdamW).
        weight_decay: the optimizer's weight decay.
        seed: seeds the weights, the data order and the masks.
        init: weights to fine-tune from (and the teacher for distillation).
        l1: the L1 activation penalty strength (see L1).
        l1_normalize: the L1 normalization: "mean", "sum" or "macs" (see L1).
        hoyer: the Hoyer-square penalty strength.
        fatrelu: the FATReLU target extra sparsity, in [0, 1).
        distill: the weight of distillation from the init model, in [0, 1] (see the module doc).
        pixel_sparsity: semi-structured pixel masks on conv outputs, the masked fraction (0: none).
        pixel_criterion: which pixels to mask: "random", "magnitude", "spread" or "taylor".
        eval_images: test images whose activations are measured each epoch.
        bits: the bit widths the per-epoch measurement codes at.
        codecs: the codecs the per-epoch measurement runs.
        train_limit: use only the first N training images (quick runs).
        sync_batchnorm: under torchrun, BatchNorm over the global batch (exactly one process's
            training, but ~1.8x slower on CPU gloo); else per rank, as usual in DDP.
        float64: train in double precision: slower, but its rounding noise (~1e-12) is far below
            any real difference, so runs compare exactly across CPUs.
    """

    model: str = "resnet20"
    width: float | None = None  # width multiplier of the small models (None: the model's default)
    dataset: str = "fashion-mnist"
    data_root: str | None = None
    download: bool = False
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"  # or "adamw"
    lr: float | None = None  # None: 0.05 for SGD, 1e-3 for AdamW
    weight_decay: float = 5e-4
    seed: int = 0
    init: str | None = None  # weights to fine-tune from
    l1: float = 0.0  # L1 penalty strength (alpha on each site's mean |x|)
    l1_normalize: str = "mean"  # or "macs": each site's mean |x| weighted by its reader's MACs (see L1)
    hoyer: float = 0.0  # Hoyer-square penalty strength
    fatrelu: float = 0.0  # FATReLU target extra sparsity
    distill: float = 0.0  # weight of distillation from the --init model, in [0, 1] (see the module doc)
    pixel_sparsity: float = 0.0  # semi-structured pixel masks on conv outputs (0: none)
    pixel_criterion: str = "random"  # or "magnitude", "spread", "taylor"
    eval_images: int = 500  # test images whose activations are measured each epoch
    bits: tuple[int, ...] = (8, 16)
    codecs: tuple[str, ...] = ("zvc", "seg", "ctx")
    train_limit: int | None = None  # use only the first N training images (quick runs)
    sync_batchnorm: bool = False  # under torchrun: BatchNorm over the global batch (exactly one process's
    #                              training, but ~1.8x slower on CPU gloo); else per-rank, as usual in DDP
    float64: bool = False  # train in double precision: slower, but its rounding noise (~1e-12) is far
    #                       below any real difference, so runs can be compared exactly across CPUs

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch size must be at least 1")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.l1 and self.hoyer:
            raise ValueError("choose one penalty: l1 or hoyer")
        if min(self.l1, self.hoyer) < 0 or not 0 <= self.fatrelu < 1:
            raise ValueError("penalties must be >= 0 and the FATReLU sparsity in [0, 1)")
        if not 0 <= self.distill <= 1:
            raise ValueError(f"the distillation weight must be in [0, 1], got {self.distill}")
        if self.distill and not self.init:
            raise ValueError("distillation needs the weights to start from (init): they are the teacher")
        L1(self.l1, normalize=self.l1_normalize)  # validates the normalization
        AnalyzeConfig(bits=self.bits, codecs=self.codecs)  # validates bits and codec names
        self.pixel_masks()  # validates the pixel-mask settings

    def pixel_masks(self) -> PixelMask:
        return PixelMask(self.pixel_sparsity, self.pixel_criterion, seed=self.seed)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        d = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known}
        return cls(**d)


@dataclass
class Run:
    """Everything one training run works with."""

    config: TrainConfig
    out: Path
    model: nn.Module
    train_set: torch.utils.data.Dataset
    test_set: torch.utils.data.Dataset
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    thresholds: dict = field(default_factory=dict)
    masks: PixelMaskHandle | None = None
    start_epoch: int = 0
    metrics: list = field(default_factory=list)
    net: nn.Module | None = None  # what the training forward calls: the model, or its DDP wrapper
    teacher: nn.Module | None = None  # the frozen --init model, when distilling


def epoch_loader(train_set, config: TrainConfig, epoch: int) -> DataLoader:
    """This rank's batches of one epoch: a permutation seeded by (seed, epoch), cut so that the
    ranks' local batches together are the batch one process would take."""
    rank, world = rank_and_world()
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=config.seed,
                                 drop_last=True)
    sampler.set_epoch(epoch)
    return DataLoader(train_set, batch_size=config.batch_size // world, sampler=sampler, drop_last=True)


def build_model(config: TrainConfig, in_channels: int, num_classes: int) -> nn.Module:
    if config.model in SMALL_MODELS:
        kwargs = {"in_channels": in_channels, "num_classes": num_classes}
        if config.width is not None:
            kwargs["width"] = config.width
        model = models.load(config.model, pretrained=False, **kwargs)
    else:
        model = models.load(config.model, pretrained=False, num_classes=num_classes)
    if config.float64:
        model = model.double()
        # datasets yield float32 images: the model casts its input, so every caller stays as it is
        model.register_forward_pre_hook(lambda m, args: tuple(a.double() if torch.is_tensor(a) else a
                                                              for a in args))
    return model


def trained_model(run: Path | str) -> tuple[nn.Module, TrainConfig, TrainingSets]:
    """(model with the weights a finished run trained, its config, its data sets) of run folder
    `run` (its report.json and weights.pt)."""
    run = Path(run)
    config = TrainConfig.from_dict(json.loads((run / "report.json").read_text())["training"]["config"])
    sets = training_sets(config.dataset, config.data_root, False)
    model = build_model(config, sets.in_channels, sets.num_classes)
    models.load_weights(model, run / "weights.pt")
    return model, config, sets


def _save(obj, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getvalue())


def _checkpoint(run: Run, epoch: int) -> None:
    if not is_main():
        return
    _save({"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
           "scheduler": run.scheduler.state_dict(), "epoch": epoch, "rng": torch.get_rng_state(),
           "thresholds": run.thresholds, "config": run.config.to_dict()}, run.out / "checkpoint.pt")
    atomic_write(run.out / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in run.metrics))


def _optimizer(config: TrainConfig, model: nn.Module, steps_per_epoch: int):
    """The optimizer (SGD with Nesterov momentum, or AdamW) and its cosine schedule over the run."""
    lr = config.lr if config.lr is not None else (0.05 if config.optimizer == "sgd" else 1e-3)
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=config.weight_decay,
                                    nesterov=True)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(config.epochs * steps_per_epoch, 1))
    return optimizer, scheduler


def _prepare(config: TrainConfig, out: Path, resume: bool) -> Run:
    if resume and not (out / "checkpoint.pt").is_file():
        raise ActzipError(f"{out} is not a training run (no checkpoint.pt and config.json) to resume")
    out = writable_dir(out)
    checkpoint = out / "checkpoint.pt"
    state = None
    if resume:
        if not (out / "config.json").is_file():
            raise ActzipError(f"{out} is not a training run (no checkpoint.pt and config.json) to resume")
        config = TrainConfig.from_dict(json.loads((out / "config.json").read_text()))
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ActzipError(f"cannot read {checkpoint}: {str(e).splitlines()[0]}") from None
    elif checkpoint.exists():
        raise ActzipError(f"{out} already holds a run: pass --resume to continue it, or another --out")
    world = rank_and_world()[1]
    if config.batch_size % world:
        raise ActzipError(f"the global batch size {config.batch_size} must divide among {world} processes")
    torch.manual_seed(config.seed)
    sets = training_sets(config.dataset, config.data_root, config.download)
    train_set = sets.train if config.train_limit is None else Subset(sets.train, range(min(config.train_limit,
                                                                                         len(sets.train))))
    model = build_model(config, sets.in_channels, sets.num_classes)
    if config.init and state is None:
        models.load_weights(model, config.init)
    teacher = None
    if config.distill:  # from the init weights even on resume: the checkpoint holds the student
        teacher = build_model(config, sets.in_channels, sets.num_classes)
        models.load_weights(teacher, config.init)
        teacher.eval().requires_grad_(False)
    masks = None
    if config.pixel_sparsity:  # before the broadcast, so that every rank gets rank 0's masks
        masks = attach_pixel_masks(model, config.pixel_masks(), train_set[0][0][None], train_set)
    if world > 1:  # before the optimizer: new BatchNorm modules would hold new parameters
        broadcast_module(model)
        if config.sync_batchnorm:
            global_batchnorm(model)
    optimizer, scheduler = _optimizer(config, model, len(epoch_loader(train_set, config, 0)))
    run = Run(config, out, model, train_set, sets.test, optimizer, scheduler, masks=masks, teacher=teacher)
    run.net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        run.thresholds = state["thresholds"]
        run.start_epoch = int(state["epoch"])
        if (out / "metrics.jsonl").is_file():
            run.metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    else:
        if is_main():
            atomic_write(out / "config.json", json.dumps(config.to_dict(), indent=1))
        if config.fatrelu:
            run.thresholds = calibrate_thresholds(model, train_set, FATReLU(config.fatrelu))
    return run


def evaluate(model: nn.Module, test_set, config: TrainConfig) -> tuple[float, dict]:
    """(top-1 on the whole test set, analyze report of the first eval_images test images)."""
    model.eval()
    rank, world = rank_and_world()
    correct = total = 0
    with torch.no_grad():
        for x, y in DataLoader(Subset(test_set, range(rank, len(test_set), world)), batch_size=500):
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    correct, total = all_reduce_sum(np.array([correct, total], np.int64))
    analyze_config = AnalyzeConfig(bits=config.bits, codecs=config.codecs, batch_size=100,
                                   calibration_images=min(config.eval_images, 200))
    subset = Subset(test_set, range(min(config.eval_images, len(test_set))))
    report = build_report(measure(model, subset, analyze_config), config.model, config.dataset, None, analyze_config)
    return float(correct) / max(int(total), 1), report


def _epoch_metrics(epoch, loss, penalty, seconds, top1, report) -> dict:
    t = report["totals"]
    return {"epoch": epoch + 1, "loss": loss, "penalty": penalty, "top1": top1, "seconds": seconds,
            "zero_fraction": t["zero_fraction"], "macs": t["macs"], "effective_macs": t["effective_macs"],
            "zero_skipping_speedup": t["theoretical_speedup"],
            "bits_per_activation": {c: {b: int(b) / r if r else None for b, r in per.items()}
                                    for c, per in t["compression"].items()},
            "site_zero_fraction": {s["name"]: s["zero_fraction"] for s in report["sites"]}}


def train(config: TrainConfig, out: str | Path, resume: bool = False, progress: Progress | None = None) -> dict:
    """Train (or fine-tune, or resume) and return the final report, with its `training` metrics.
    Under torchrun every rank calls this; rank 0 writes the files."""
    init_from_env()
    if not is_main():
        progress = None
    run = _prepare(config, Path(out), resume)
    config = run.config
    fat = attach_fatrelu(run.model, run.thresholds) if run.thresholds else None
    penalty_cfg = (L1(config.l1, normalize=config.l1_normalize) if config.l1
                   else Hoyer(config.hoyer) if config.hoyer else None)
    penalty = attach_penalty(run.model, penalty_cfg) if penalty_cfg else None
    try:
        last = None
        for epoch in range(run.start_epoch, config.epochs):
            metrics, last = _train_epoch(run, epoch, penalty, progress)
            run.metrics.append(metrics)
            _checkpoint(run, epoch + 1)
            barrier()
        top1, report = last if last else evaluate(run.model, run.test_set, config)
    finally:
        if penalty:
            penalty.detach()
        if fat:
            fat.detach()
        if run.masks:
            run.masks.detach()
    report["training"] = {"config": config.to_dict(), "top1": top1, "epochs": run.metrics}
    if is_main():
        _save(run.model.state_dict(), run.out / "weights.pt")
        write_report(report, run.out)
    barrier()
    return report


def _train_epoch(run: Run, epoch: int, penalty, progress: Progress | None) -> tuple[dict, tuple[float, dict]]:
    """Train one epoch, evaluate; (metrics, (top1, report))."""
    config = run.config
    loader = epoch_loader(run.train_set, config, epoch)
    world = rank_and_world()[1]
    run.model.train()
    start = time.perf_counter()
    total_loss = total_penalty = 0.0
    steps = len(loader)
    for step, (x, y) in enumerate(loader):
        if run.masks:
            run.masks.update((epoch * steps + step) / (config.epochs * steps))
        logits = run.net(x)
        loss = F.cross_entropy(logits, y)
        if run.teacher is not None:
            with torch.no_grad():
                soft = F.softmax(run.teacher(x) / DISTILL_TEMPERATURE, dim=1)
            kl = F.kl_div(F.log_softmax(logits / DISTILL_TEMPERATURE, dim=1), soft, reduction="batchmean")
            loss = (1 - config.distill) * loss + config.distill * DISTILL_TEMPERATURE**2 * kl
        extra = penalty.take() if penalty else torch.zeros(())
        objective = loss + extra
        value = float(objective.detach())
        if world > 1:  # every rank must stop together
            value = float(all_reduce_sum(np.array([value])).item())
        if not math.isfinite(value):
            raise ActzipError(f"the loss became {value} at epoch {epoch + 1}, step {step + 1}; "
                              f"{run.out / 'checkpoint.pt'} holds the last good epoch (try a lower --lr)")
        run.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        run.optimizer.step()
        run.scheduler.step()
        total_loss += float(loss.detach())
        total_penalty += float(extra.detach())
        if progress:
            progress(f"epoch {epoch + 1}/{config.epochs}", step + 1, steps, {"loss": total_loss / (step + 1)})
    seconds = time.perf_counter() - start
    total_loss, total_penalty = (float(v) / world for v in all_reduce_sum(np.array([total_loss, total_penalty])))
    top1, report = evaluate(run.model, run.test_set, config)
    if progress:
        progress("evaluated", epoch + 1, config.epochs, {"top1": top1, "zeros": report["totals"]["zero_fraction"]})
    metrics = _epoch_metrics(epoch, total_loss / max(steps, 1), total_penalty / max(steps, 1), seconds, top1,
                             report)
    if run.masks:
        metrics["pixel_sparsity"] = run.masks.sparsity
    return metrics, (top1, report)
