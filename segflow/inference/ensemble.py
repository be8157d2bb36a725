"""Several trained copies of one network used as one model (nnU-Net's fold ensemble).

The members' class probabilities are averaged and returned as log-probabilities: softmax of the
output is exactly the mean of the members' softmax (for one sigmoid channel, the output is the
logit of the mean probability), so the Predictor, sliding windows, test-time augmentation and
export treat an ensemble like any network. Region channels (`sigmoid`, which the Predictor sets with
`follow_labels` for data with regions) average each channel's sigmoid and give its logit back.
"""
from __future__ import annotations

import torch
from torch import nn

from segflow.inference.tta import to_probabilities
from segflow.networks.description import describe, description_of

_EPS = 1e-7  # probabilities are clamped here before the log, so a class no member predicts stays finite


class Ensemble(nn.Module):
    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        described = description_of(members[0])
        if described:  # sizes, dims and channels are the members' (they share one architecture)
            describe(self, described.renamed(f"ensemble of {len(members)} {described.type}"))
        self.sigmoid = False  # region channels: each averaged as a sigmoid probability

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for member in self.members:
            logits = member(x)
            if isinstance(logits, (list, tuple)):  # deep supervision: the full-resolution head
                logits = logits[0]
            p = to_probabilities(logits, self.sigmoid)  # as the Predictor reads them; one sigmoid channel -> [1 - p, p]
            total = p if total is None else total + p
        mean = total / len(self.members)
        if self.sigmoid:  # each region channel: the logit of its mean probability
            mean = mean.clamp(_EPS, 1 - _EPS)
            return torch.log(mean) - torch.log1p(-mean)
        if logits.shape[1] == 1:  # back to one channel: the logit of the mean foreground probability
            fg = mean[:, 1:].clamp(_EPS, 1 - _EPS)
            return torch.log(fg) - torch.log1p(-fg)
        return torch.log(mean.clamp_min(_EPS))


def follow_labels(model: nn.Module, region_based: bool) -> None:
    """Make an ensemble average sigmoid region channels (or softmax classes); other models are left as they are."""
    if isinstance(model, Ensemble):
        model.sigmoid = region_based
