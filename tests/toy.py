"""A tiny synthetic segmentation problem (bright squares on noise) for the Trainer's tests and for
checking a machine: small enough to train on CPU in seconds, with the batch format of the data nodes."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset


class Squares(Dataset):
    """`n` images (1, size, size) [or (1, size, size, size) with dims=3] with a bright square labelled 1."""

    def __init__(self, n: int = 16, size: int = 16, dims: int = 2, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        shape = (n, 1) + (size,) * dims
        self.images = torch.randn(shape, generator=g) * 0.3
        self.labels = torch.zeros(shape, dtype=torch.long)
        for i in range(n):
            lo = torch.randint(0, size // 2, (dims,), generator=g).tolist()
            region = (i, 0) + tuple(slice(a, a + size // 3 + 1) for a in lo)
            self.images[region] += 1.0
            self.labels[region] = 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i], "case": f"case_{i:03d}"}


def loaders(n_train: int = 16, n_val: int = 8, size: int = 16, batch_size: int = 4, dims: int = 2,
            shuffle: bool = True) -> tuple[DataLoader, DataLoader]:
    train = DataLoader(Squares(n_train, size, dims, seed=0), batch_size=batch_size, shuffle=shuffle)
    val = DataLoader(Squares(n_val, size, dims, seed=1), batch_size=batch_size, shuffle=False)
    return train, val


def tiny_net(dims: int = 2, channels: int = 8, out_channels: int = 2) -> torch.nn.Module:
    conv = torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d
    return torch.nn.Sequential(conv(1, channels, 3, padding=1), torch.nn.ReLU(), conv(channels, out_channels, 1))


class CrossEntropy(torch.nn.Module):
    """loss(logits, label) with label (B, 1, *spatial), as the Loss port type."""

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, label[:, 0])
