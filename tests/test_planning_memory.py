"""The planner's memory estimate (segflow/planning/sizing.py) against a measured peak on the CPU.

The estimate is nnU-Net's: feature-map elements of one forward pass (topology.feature_map_voxels),
scaled by the count nnU-Net calibrated on a GPU, 560e6 elements for 8 GB at batch 2 in 3-D. That is
8 GiB / (2 x 560e6) = 7.67 bytes per counted element and sample, for mixed-precision training, with
the GPU's fixed costs (CUDA context, cuDNN workspace, weights, optimizer state) folded in at the
reference size.

The measurement: one forward and backward pass of the planned DynUNet (instance norm, leaky ReLU, deep
supervision as planned) on a batch of the planned patch, in fp32 on the CPU, under torch.profiler with
profile_memory. Its allocation events carry the CPU allocator's running total of bytes allocated; the
peak is the highest total minus the total before the first event (the weights and input already
exist, so it is activations, gradients and temporaries). This is torch's own count of tensor bytes,
independent of the process's other memory (RSS), which a shared 2-core machine makes noisy.

The ratio: in fp32 autograd keeps about 9.5 bytes per counted element (each convolution's input,
the norm's input and the activation's output, the decoder's concatenations: measured with
saved_tensors_hooks), and the backward pass adds about 1 byte per element of transient gradients, so
the peak is about 10.4 bytes per element: 10.4 / 7.67 = 1.36 x the estimate, the same for every
plan because both are proportional to the feature-map count. Mixed precision stores most of those
tensors in 2 bytes instead of 4, which is why nnU-Net's calibrated GPU figure is the smaller one.
The test accepts measured / estimate in [1.1, 1.7] (1.36 within 25%) and checks that bigger plans
are bigger by both counts.
"""
from __future__ import annotations

import pytest
import torch

from segflow.networks.factory import build_network
from segflow.nodes.networks import DynUNetConfig
from segflow.planning.sizing import gib_needed, size_patch_and_batch

EXPECTED_RATIO = 1.36  # measured fp32 CPU peak / estimate: 10.4 / 7.67 bytes per counted element
RATIO_RANGE = (1.1, 1.7)
PLANS = {  # name: (spacing, median shape, classes); budget 8 GiB and one case: the patch is the median shape
    "aniso32x32x8": ((0.8, 0.8, 3.0), (32, 32, 8), 3),  # 4 stages, strides [2, 2, 1] first, as for CT slices
    "iso24": ((1.0, 1.0, 1.0), (24, 24, 24), 2),  # 3 stages
    "iso32": ((1.0, 1.0, 1.0), (32, 32, 32), 2),  # 4 stages
}


def planned_network(spacing, shape, num_classes):
    sizing = size_patch_and_batch(spacing, shape, num_classes, budget_gib=8.0, num_cases=1)
    topo = sizing.topology
    config = DynUNetConfig(spatial_dims=3, in_channels=1, out_channels=num_classes, kernel_size=topo.kernels,
                           strides=topo.strides, filters=topo.features, deep_supervision=topo.stages >= 3,
                           deep_supr_num=max(1, topo.stages - 2))
    return build_network("DynUNet", config), sizing


def peak_allocated_bytes(step) -> int:
    """Peak of torch's CPU allocator total while `step` runs, above the total when it started."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = []

    def collect(node):  # allocation events are the nodes whose fields carry the running total
        fields = node.extra_fields
        if hasattr(fields, "total_allocated"):
            events.append((node.start_time_ns, fields.alloc_size, fields.total_allocated))
        for child in node.children:
            collect(child)

    for root in prof.profiler.kineto_results.experimental_event_tree():
        collect(root)
    assert events, "the profiler recorded no allocations"
    events.sort()
    _, first_size, first_total = events[0]
    return max(total for _, _, total in events) - (first_total - first_size)


def measure(name: str) -> tuple[float, float]:
    """(estimate, measured peak) in bytes for plan `name` at its planned batch size."""
    torch.manual_seed(0)
    net, sizing = planned_network(*PLANS[name])
    net.train()
    x = torch.randn(sizing.batch_size, 1, *sizing.topology.patch)

    def step():
        out = net(x)
        full = out if isinstance(out, torch.Tensor) else out[0]
        full.mean().backward()

    estimate = gib_needed(sizing.topology, PLANS[name][2], sizing.batch_size) * 2**30
    return estimate, float(peak_allocated_bytes(step))


@pytest.fixture(scope="module")
def measurements():
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    try:
        return {name: measure(name) for name in PLANS}
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("name", list(PLANS))
def test_measured_peak_is_the_stated_multiple_of_the_estimate(measurements, name):
    estimate, measured = measurements[name]
    ratio = measured / estimate
    low, high = RATIO_RANGE
    assert low <= ratio <= high, (
        f"{name}: measured {measured / 2**20:.0f} MiB, estimate {estimate / 2**20:.0f} MiB, ratio {ratio:.2f}; "
        f"expected about {EXPECTED_RATIO} (fp32 CPU against nnU-Net's fp16 GPU calibration)")


def test_bigger_plans_are_bigger_by_both_counts(measurements):
    by_estimate = sorted(measurements, key=lambda n: measurements[n][0])
    by_measure = sorted(measurements, key=lambda n: measurements[n][1])
    assert by_estimate == by_measure == list(PLANS)  # PLANS is written smallest first


def test_the_planned_batch_is_two_and_the_patch_the_median_shape():
    """What the measurements above rest on: at 8 GiB these small plans keep their median shape as the
    patch and the minimum batch of 2 (one case: 5% of the dataset is less than a patch)."""
    for spacing, shape, classes in PLANS.values():
        _, sizing = planned_network(spacing, shape, classes)
        assert sizing.batch_size == 2
        assert list(sizing.topology.patch) == list(shape)
