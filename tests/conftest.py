"""Phantom datasets shared by the data tests (written once per test module)."""
import pytest

from segflow.data.phantoms import write_phantom_dataset


@pytest.fixture(scope="module")
def phantom2d(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("p") / "phantom2d", "2d", num_cases=10, size=48)


@pytest.fixture(scope="module")
def phantom3d(tmp_path_factory):
    return write_phantom_dataset(tmp_path_factory.mktemp("p") / "phantom3d", "3d", num_cases=5, size=(24, 20, 16),
                                 num_classes=3)
