"""torch.distributed support: started by torchrun, one process per rank (gloo on CPU, nccl on GPU).

Training uses DistributedDataParallel with a BatchNorm that normalises over the *global* batch
(PyTorch's SyncBatchNorm refuses CPU modules), so N processes with the same global batch train the
same model as one. Analysis shards the batches round-robin and all-reduces its statistics, so the
report equals the single-process one.
"""

from __future__ import annotations

import atexit
import os

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


def init_from_env() -> bool:
    """Join the process group torchrun describes (no-op for a single process); True if distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        # Left to interpreter shutdown, gloo's worker threads are torn down after Python is gone and
        # the process aborts now and then ("terminate called without an active exception").
        atexit.register(_shutdown)
    return dist.is_initialized() and dist.get_world_size() > 1


def _shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_and_world()[0] == 0


def barrier() -> None:
    if rank_and_world()[1] > 1:
        dist.barrier()


def all_reduce_sum(a: np.ndarray) -> np.ndarray:
    """Element-wise sum over ranks (returns `a` itself in a single process)."""
    if rank_and_world()[1] == 1:
        return a
    t = torch.from_numpy(np.ascontiguousarray(a))
    dist.all_reduce(t)
    return t.numpy()


def broadcast_module(model: nn.Module) -> nn.Module:
    """Give every rank rank 0's parameters and buffers (randomly initialised models differ per rank)."""
    if rank_and_world()[1] > 1:
        with torch.no_grad():
            for t in model.state_dict().values():
                dist.broadcast(t, src=0)
    return model


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the batch of every rank (differentiably)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or rank_and_world()[1] == 1:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype)
        stats = all_reduce(torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), count]))
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = stats[c:2 * c] / n - mean * mean
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1))
        y = (x - mean[None, :, None, None]) * torch.rsqrt(var[None, :, None, None] + self.eps)
        return y * self.weight[None, :, None, None] + self.bias[None, :, None, None] if self.affine else y


def global_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d (in place) by a GlobalBatchNorm2d holding the same parameters."""
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            dtype = next(child.parameters(), next(child.buffers(), torch.empty(0))).dtype
            bn = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats, dtype=dtype)
            bn.load_state_dict(child.state_dict())
            setattr(model, name, bn)
        else:
            global_batchnorm(child)
    return model
