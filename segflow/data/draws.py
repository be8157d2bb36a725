"""Every random draw of the training data as a function of (seed, epoch, sample index) alone.

The training sampler hands the dataset keys (epoch, index) instead of bare indices (`EpochSampler`),
and the dataset restarts its random generators from that key before it makes the sample
(`SampleRandom.start`): the epoch's order, the patch position and the augmentation of every sample
then follow from the loader's seed, the epoch number and the index. Nothing else needs saving for
an exact resume: not the state of generators in worker processes, nor which worker made which
sample, so the number of workers and persistent workers make no difference either.
"""
from __future__ import annotations

import hashlib
import random

import numpy as np
from torch.utils.data import Sampler

# Keys are hashed (blake2b) rather than combined by arithmetic: any integer seed works, negative ones
# too, and no two keys give related streams.


class SampleRandom:
    """The generators a training dataset and its augmentation pipeline draw from, restarted per sample.

    One PCG64 bit generator is behind all three: `numpy` (patch sampling, albumentations'
    `random_generator`), `legacy` (the RandomState MONAI transforms call `R`) and `python`
    (albumentations' `py_random`). The pipeline is pointed at them once (`augment.draw_from`); per
    sample only the bit generator's state is set: a few microseconds, where building a RandomState
    costs tens and reseeding python's Mersenne Twister about 8.
    """

    def __init__(self, seed: int):
        self.seed = seed
        self.bits = np.random.PCG64(0)  # its state is set by `start`
        self.numpy = np.random.Generator(self.bits)
        self.python = _PythonRandom(self.numpy)
        self._legacy: np.random.RandomState | None = None
        self.start(0, 0)

    @property
    def legacy(self) -> np.random.RandomState:
        """Made when first asked for (by MONAI pipelines): restarting it costs a little more."""
        if self._legacy is None:
            self._legacy = np.random.RandomState(self.bits)
        return self._legacy

    def start(self, epoch: int, index: int) -> None:
        """Restart every generator at the stream of sample `index` of `epoch`."""
        key = hashlib.blake2b(f"sample/{self.seed}/{epoch}/{index}".encode(), digest_size=32).digest()
        state = {"bit_generator": "PCG64", "has_uint32": 0, "uinteger": 0,
                 "state": {"state": int.from_bytes(key[:16], "little"),
                           "inc": int.from_bytes(key[16:], "little") | 1}}
        if self._legacy is None:
            self.bits.state = state
        else:  # sets the bit generator's state too, and clears the spare Gaussian RandomState keeps
            self._legacy.set_state({**state, "has_gauss": 0, "gauss": 0.0})


class _PythonRandom(random.Random):
    """python's `random.Random` interface over a NumPy generator (subclassing as the `random` module
    documents it: `random` and `getrandbits` overridden), so that it restarts with the generator.
    `gauss` is overridden too: Random's own keeps a spare value from one call to the next."""

    def __init__(self, generator: np.random.Generator):
        self.generator = generator
        super().__init__(0)

    def random(self) -> float:
        return self.generator.random()

    def getrandbits(self, k: int) -> int:
        return int.from_bytes(self.generator.bytes((k + 7) // 8), "little") >> (-k % 8)

    def gauss(self, mu: float = 0.0, sigma: float = 1.0) -> float:
        return mu + sigma * self.generator.standard_normal()

    def __reduce__(self):  # spawned workers get the dataset pickled; Random's own would drop the generator
        return type(self), (self.generator,)


def sample_key(key) -> tuple[int, int]:
    """(epoch, index) from what a loader hands `__getitem__`: an `EpochSampler` key, or a bare index
    (validation, prediction, direct indexing), which counts as epoch 0."""
    if isinstance(key, tuple):
        return int(key[0]), int(key[1])
    return 0, int(key)


class EpochSampler(Sampler):
    """The training loader's sampler: keys (epoch, index), in an order that is a function of
    (seed, epoch): shuffled with `shuffle`, else in index order; under torchrun the order and
    shard of torch's DistributedSampler (`shards`), which reshuffles by (its seed, epoch) too.

    The Trainer calls `set_epoch` before each epoch, as it does for DistributedSampler. A consumer
    that never does still gets a new epoch, and new draws, with every pass.
    """

    def __init__(self, n: int, seed: int, shuffle: bool, shards: Sampler | None = None):
        self.n, self.seed, self.shuffle, self.shards = n, seed, shuffle, shards
        self.epoch = 1  # the Trainer's first epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> list[int]:
        if self.shards is not None:
            self.shards.set_epoch(self.epoch)
            return list(self.shards)
        if self.shuffle:
            key = hashlib.blake2b(f"order/{self.seed}/{self.epoch}".encode(), digest_size=16).digest()
            return np.random.default_rng(int.from_bytes(key, "little")).permutation(self.n).tolist()
        return list(range(self.n))

    def __iter__(self):
        epoch, order = self.epoch, self._order()
        self.epoch += 1
        return iter([(epoch, index) for index in order])

    def __len__(self) -> int:
        return len(self.shards) if self.shards is not None else self.n
