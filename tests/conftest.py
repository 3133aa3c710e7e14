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
