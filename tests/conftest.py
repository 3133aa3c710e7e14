import numpy as np
import pytest
import torch
from torch import nn


class TinyNet(nn.Module):
    """conv -> relu -> conv (called twice) -> pool -> linear: 4 sites, one module reused."""

    def __init__(self, in_channels=3, classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = self.conv2(x)
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return TinyNet().eval()


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def steady_state_faults():
    """A function of `run` giving the minor page faults of three windows of three calls each, after
    two calls to warm up. A run that maps fresh pages for its tensors faults thousands in every
    window, while Python's own allocator, after the tests before, may map a page once in a while:
    a steady state is some window with none."""
    from actzip.runtime.memory import minor_faults

    def measure(run):
        for _ in range(2):
            run()
        windows = []
        for _ in range(3):
            before = minor_faults()
            for _ in range(3):
                run()
            windows.append(minor_faults() - before)
        return windows

    return measure


class TensorSet(torch.utils.data.Dataset):
    def __init__(self, x, name="random"):
        self.x = x
        self.name = name

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], -1


@pytest.fixture
def random_images():
    torch.manual_seed(1)
    return TensorSet(torch.randn(10, 3, 12, 12))


def write_two_class_folder(root, train_per_class=24, val_per_class=8):
    """train/ and val/ folders of dark and bright 32x32 RGB squares with noise: an easy dataset."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for cls, base in (("dark", 40), ("bright", 200)):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                noise = torch.randint(-30, 30, (32, 32, 3), generator=g)
                Image.fromarray((noise + base).clamp(0, 255).byte().numpy()).save(root / split / cls / f"{i}.png")
    return root
