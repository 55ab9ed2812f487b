"""`sac train`: the papers' recipe (BCE + Dice, Adam) on SacRoiNet. Needs torch.

Losses: the class head (4-class or binary) and the block head each get binary
cross-entropy plus soft Dice, on one-hot targets, ignoring label 255. The block
target of a 16x16 cell is "any ROI pixel in it" (the macroblock filter).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from sac_ros.config import SegmentationConfig, TrainConfig
from sac_ros.core.errors import SacError
from sac_ros.segmentation.backends.torch_backend import (
    import_torch,
    load_checkpoint,
    save_checkpoint,
)
from sac_ros.segmentation.datasets import SegmentationDataset, augment, open_dataset

VAL_SPLITS = {"cityscapes": "val", "kitti_step": "val", "evalset": "heldout"}
HEAD_CLASSES = {"four_class": 4, "binary": 2}


@dataclass
class TrainSettings:
    dataset: str
    data_root: str | None
    out: Path
    head: str = "four_class"
    train_split: str = "train"
    val_split: str | None = None          # None: the dataset's usual validation split
    # The recipe's defaults are config.TrainConfig's (segmentation.yaml ``train``).
    epochs: int = TrainConfig.epochs
    steps_per_epoch: int | None = None    # None: one pass over the training frames
    batch_size: int = TrainConfig.batch_size
    crop: tuple[int, int] = TrainConfig.crop
    scale: tuple[float, float] = TrainConfig.scale
    lr: float = TrainConfig.lr
    lr_schedule: str = TrainConfig.lr_schedule  # or "cosine": to 1% of lr by the last step
    betas: tuple[float, float] = TrainConfig.betas
    weight_decay: float = TrainConfig.weight_decay
    width: float = TrainConfig.width
    depth: int = TrainConfig.depth
    shadow_prob: float = TrainConfig.shadows  # share of crops given shadows / sun patches
    ema: float = TrainConfig.ema            # weight averaging per step (0: off)
    seed: int = TrainConfig.seed
    threads: int = SegmentationConfig.threads
    val_limit: int | None = None
    val_every: int = 1                    # validate every N epochs (and after the last)
    input_size: Any = SegmentationConfig.input_size
    resume: Path | None = None
    progress: bool = True
    non_roi_ids: list[int] | None = None
    history: list[dict] = field(default_factory=list)


def bce_dice(torch, logits, onehot, valid):
    """Binary cross-entropy + soft Dice over channels; ``valid`` masks ignored pixels."""
    functional = torch.nn.functional
    weight = valid.expand_as(onehot)
    bce = functional.binary_cross_entropy_with_logits(logits, onehot, weight=weight,
                                                      reduction="sum")
    bce = bce / weight.sum().clamp(min=1.0)
    probs = torch.sigmoid(logits) * weight
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + (onehot * weight).sum(dims)
    dice = 1.0 - ((2.0 * inter + 1.0) / (denom + 1.0)).mean()
    return bce + dice


def batch_loss(torch, model, images, targets, roi_ids, num_classes: int):
    """Total loss of one batch: class head + block head, each BCE + Dice."""
    functional = torch.nn.functional
    class_logits, block_logits = model(images)
    class_logits = functional.interpolate(class_logits, size=targets.shape[1:], mode="bilinear",
                                          align_corners=False)
    valid = (targets != 255).unsqueeze(1).float()
    safe = torch.where(targets == 255, torch.zeros_like(targets), targets)
    onehot = functional.one_hot(safe, num_classes).permute(0, 3, 1, 2).float()
    class_loss = bce_dice(torch, class_logits, onehot, valid)
    roi = torch.isin(safe, roi_ids).unsqueeze(1).float() * valid
    block_target = functional.max_pool2d(roi, 16)        # any ROI pixel in the cell
    block_valid = functional.max_pool2d(valid, 16)       # any labelled pixel in the cell
    block_loss = bce_dice(torch, block_logits, block_target, block_valid)
    return class_loss + block_loss, class_loss.detach(), block_loss.detach()


def make_batch(torch, dataset: SegmentationDataset, settings: TrainSettings,
               rng: np.random.Generator):
    images, targets = [], []
    for index in rng.integers(0, len(dataset), size=settings.batch_size):
        rgb, target = dataset.load(int(index))
        image, labels = augment(rgb, target, settings.crop, settings.scale, rng,
                                settings.shadow_prob)
        images.append(image.transpose(2, 0, 1))
        targets.append(labels)
    return (torch.from_numpy(np.stack(images)),
            torch.from_numpy(np.stack(targets).astype(np.int64)))


def validate(model, dataset: SegmentationDataset, settings: TrainSettings) -> dict[str, float]:
    """Pixel and block iIoU / mIoU of the model on the validation frames."""
    from sac_ros.segmentation.backends.torch_backend import ModuleBackend
    from sac_ros.segmentation.classmaps import ClassMapAdapter
    from sac_ros.segmentation.scoring import score_segmenter
    from sac_ros.segmentation.segmenter import Segmenter

    segmenter = Segmenter(ModuleBackend(model, settings.head), ClassMapAdapter(settings.head),
                          input_size=settings.input_size)
    count = len(dataset) if settings.val_limit is None else min(len(dataset), settings.val_limit)
    rgbs, truths = [], []
    for index in range(count):
        rgb, target = dataset.load(index)
        if settings.head == "binary":  # 1 ROI / 0 non-ROI -> 0 ROI / 1 non-ROI, 255 kept
            target = np.where(target == 255, 255, 1 - np.minimum(target, 1)).astype(np.uint8)
        rgbs.append(rgb)
        truths.append(target)
    table = np.arange(256, dtype=np.uint8) if settings.head == "four_class" else None
    scores, _ = score_segmenter(segmenter, rgbs, truths, table, time_runs=0)
    return scores.summary()


@dataclass
class _Run:
    """One training run's model, optimiser, data and position."""

    torch: Any
    settings: TrainSettings
    train_set: SegmentationDataset
    val_set: SegmentationDataset | None
    num_classes: int
    roi_ids: Any
    model: Any
    optimizer: Any
    averaged: Any                         # the weight average, None when ema is off
    rng: np.random.Generator
    start_epoch: int = 1
    step: int = 0
    history: list[dict] = field(default_factory=list)

    @property
    def final(self):
        """The model that is validated and exported: the average when there is one."""
        return self.model if self.averaged is None else self.averaged.module


def train(settings: TrainSettings) -> dict[str, Any]:
    """Run (or resume) a training; returns the final checkpoint state."""
    run = _start(settings)
    steps = settings.steps_per_epoch or math.ceil(len(run.train_set) / settings.batch_size)
    from sac_ros.segmentation.network import count_parameters

    print(f"sac train: {settings.dataset} ({len(run.train_set)} training frames"
          + (f", {len(run.val_set)} validation frames" if run.val_set else "") + f"), head "
          f"{settings.head}, SacRoiNet width {settings.width:g} depth {settings.depth} "
          f"({count_parameters(run.model):,} parameters), {steps} steps/epoch of "
          f"{settings.batch_size} crops {settings.crop[0]}x{settings.crop[1]}", file=sys.stderr)
    state: dict[str, Any] = {}
    best = max((h["val"]["block_iiou"] for h in run.history if "val" in h), default=-1.0)
    for epoch in range(run.start_epoch, settings.epochs + 1):
        record = _train_epoch(run, epoch, steps)
        if run.val_set is not None and (epoch % settings.val_every == 0
                                        or epoch == settings.epochs):
            record["val"] = validate(run.final, run.val_set, settings)
        run.history.append(record)
        line = f"epoch {epoch}/{settings.epochs}: loss {record['loss']:.4f}"
        if "val" in record:
            val = record["val"]
            line += (f"; val pixel iIoU {val['pixel_iiou']:.4f} mIoU {val['pixel_miou']:.4f}, "
                     f"block iIoU {val['block_iiou']:.4f} mIoU {val['block_miou']:.4f}")
        print(line + f" ({record['seconds']:.0f} s)", file=sys.stderr)
        state = _checkpoint(run, epoch)
        save_checkpoint(settings.out / "last.pt", state)
        score = record.get("val", {}).get("block_iiou", float("nan"))
        if score > best:  # NaN (no validation this epoch) never wins
            best = score
            save_checkpoint(settings.out / "best.pt", state)
        (settings.out / "history.json").write_text(json.dumps(run.history, indent=1) + "\n")
    if not state:
        raise SacError(f"nothing to do: the checkpoint already reached epoch "
                       f"{run.start_epoch - 1} of {settings.epochs} (raise --epochs to continue)")
    state["model_object"] = run.final
    return state


def _start(settings: TrainSettings) -> _Run:
    """The datasets, a fresh model and optimiser, seeded; then the checkpoint to resume."""
    torch = import_torch()
    from sac_ros.segmentation.network import STRIDE, SacRoiNet

    if settings.crop[0] % STRIDE or settings.crop[1] % STRIDE:
        raise SacError(f"training crop {settings.crop[0]}x{settings.crop[1]} must be multiples "
                       f"of {STRIDE}")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    train_set = open_dataset(settings.dataset, settings.data_root, settings.train_split,
                             settings.head, settings.non_roi_ids)
    val_split = settings.val_split or VAL_SPLITS[settings.dataset]
    val_set = (open_dataset(settings.dataset, settings.data_root, val_split, settings.head,
                            settings.non_roi_ids) if val_split != "none" else None)
    num_classes = HEAD_CLASSES[settings.head]
    roi_ids = torch.tensor([0] if settings.head == "four_class" else [1])
    model = SacRoiNet(num_classes, settings.width, settings.depth)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, betas=settings.betas,
                                 weight_decay=settings.weight_decay)
    # the averaged weights (batch-norm statistics included) are what gets validated and
    # exported: with 50-step epochs the raw weights of one epoch end scatter widely
    averaged = _averaged_model(torch, model, settings.ema)
    run = _Run(torch, settings, train_set, val_set, num_classes, roi_ids, model, optimizer,
               averaged, np.random.default_rng(settings.seed))
    torch.manual_seed(settings.seed)
    if settings.resume:
        _resume(run)
    return run


def _resume(run: _Run) -> None:
    """Load ``settings.resume`` into the run: weights, optimiser, position, history."""
    settings = run.settings
    checkpoint = load_checkpoint(settings.resume)
    saved = (checkpoint["num_classes"], checkpoint["width"], checkpoint.get("depth", 0))
    if saved != (run.num_classes, settings.width, settings.depth):
        raise SacError(f"{settings.resume} is a {checkpoint['class_map']} model of width "
                       f"{checkpoint['width']} and depth {saved[2]}; it cannot resume a "
                       f"{settings.head} run of width {settings.width} and depth "
                       f"{settings.depth}")
    run.model.load_state_dict(checkpoint["model"])
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    if run.averaged is not None:
        run.averaged.module.load_state_dict(checkpoint.get("averaged", checkpoint["model"]))
        run.averaged.n_averaged.fill_(checkpoint["step"])
    run.start_epoch, run.step = checkpoint["epoch"] + 1, checkpoint["step"]
    run.history = list(checkpoint.get("history", []))
    run.rng = np.random.default_rng([settings.seed, checkpoint["epoch"]])  # fresh, reproducible
    run.torch.manual_seed(settings.seed + checkpoint["epoch"])
    print(f"resuming {settings.resume} after epoch {checkpoint['epoch']}", file=sys.stderr)


def _train_epoch(run: _Run, epoch: int, steps: int) -> dict[str, Any]:
    """One epoch of ``steps`` batches; its history record (without validation)."""
    settings, optimizer = run.settings, run.optimizer
    run.model.train()
    started = time.perf_counter()
    losses = []
    bar = tqdm(range(steps), desc=f"epoch {epoch}/{settings.epochs}", unit="step",
               disable=not settings.progress or None, file=sys.stderr, leave=False)
    for _ in bar:
        if settings.lr_schedule == "cosine":
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(settings.lr, run.step, settings.epochs * steps)
        images, targets = make_batch(run.torch, run.train_set, settings, run.rng)
        loss, class_loss, block_loss = batch_loss(run.torch, run.model, images, targets,
                                                  run.roi_ids, run.num_classes)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if run.averaged is not None:
            run.averaged.update_parameters(run.model)
        run.step += 1
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}", cls=f"{float(class_loss):.3f}",
                        block=f"{float(block_loss):.3f}")
    bar.close()
    return {"epoch": epoch, "step": run.step, "loss": float(np.mean(losses)),
            "seconds": round(time.perf_counter() - started, 1)}


def _checkpoint(run: _Run, epoch: int) -> dict[str, Any]:
    """The checkpoint after ``epoch``: what `--resume` and `sac export` read."""
    settings = run.settings
    return {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
            **({} if run.averaged is None else {"averaged": run.final.state_dict()}),
            "epoch": epoch, "step": run.step, "num_classes": run.num_classes,
            "width": settings.width, "depth": settings.depth,
            "class_map": settings.head, "history": run.history,
            "settings": {"dataset": settings.dataset, "train_split": settings.train_split,
                         "crop": list(settings.crop), "scale": list(settings.scale),
                         "batch_size": settings.batch_size, "lr": settings.lr,
                         "lr_schedule": settings.lr_schedule,
                         "betas": list(settings.betas),
                         "weight_decay": settings.weight_decay, "seed": settings.seed,
                         "shadows": settings.shadow_prob, "ema": settings.ema}}


def cosine_lr(base: float, step: int, total_steps: int, floor: float = 0.01) -> float:
    """Half-cosine decay from ``base`` at step 0 to ``floor * base`` at the last step."""
    progress = min(1.0, step / max(1, total_steps - 1))
    return base * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _averaged_model(torch, model, decay: float):
    """An exponential moving average of ``model`` (weights and buffers); None when off."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel

    @torch.no_grad()
    def update(averaged: list, current: list, count) -> None:
        # warm-up: the first weights (and batch-norm statistics) are forgotten within a few
        # dozen steps instead of lingering for hundreds at the full decay
        rate = 1.0 - min(decay, (1.0 + float(count)) / (10.0 + float(count)))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, rate)
        else:  # integer buffers (batch-norm step counts): follow the model
            for mean, value in zip(averaged, current, strict=True):
                mean.copy_(value)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)
