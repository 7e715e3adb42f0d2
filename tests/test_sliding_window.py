"""Tests for ortho_nnd.inference.sliding_window."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from ortho_nnd.inference.sliding_window import (
    compute_gaussian_importance_map,
    compute_window_starts,
    predict_sliding_window,
)


def _pointwise_network(num_classes: int = 3, in_channels: int = 1, seed: int = 0) -> nn.Module:
    """A 1x1x1 convolution: translation- and mirror-equivariant, so windows agree exactly."""
    torch.manual_seed(seed)
    return nn.Conv3d(in_channels, num_classes, kernel_size=1).eval()


class _CoverageNetwork(nn.Module):
    """Record every input window and return constant logits."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.inputs: list[torch.Tensor] = []

    def forward(self, x):
        self.inputs.append(x.clone())
        return torch.zeros((x.shape[0], self.num_classes, *x.shape[2:]))


# ---------------------------------------------------------------- window starts


@pytest.mark.parametrize(
    "image_size, patch_size, step_size",
    [
        ([10, 64, 65], [10, 32, 32], 0.5),
        ([33, 47, 100], [16, 16, 24], 0.5),
        ([17, 17, 17], [16, 16, 16], 0.25),
        ([50, 20, 20], [7, 20, 5], 1.0),
        ([9, 9, 9], [9, 9, 9], 0.5),
    ],
)
def test_window_starts_cover_volume(image_size, patch_size, step_size):
    starts = compute_window_starts(image_size, patch_size, step_size)

    for axis, (size, patch, axis_starts) in enumerate(zip(image_size, patch_size, starts)):
        covered = np.zeros(size, dtype=bool)
        for start in axis_starts:
            covered[start:start + patch] = True
        assert covered.all(), f"axis {axis} not fully covered by starts {axis_starts}"
        assert axis_starts[0] == 0
        assert axis_starts[-1] + patch == size
        max_step = max(1, int(np.floor(step_size * patch)))
        differences = np.diff(axis_starts)
        assert (differences <= max_step).all(), f"axis {axis}: steps {differences} exceed {max_step}"
        assert (differences > 0).all()


def test_window_starts_reject_bad_step():
    with pytest.raises(ValueError, match="step_size"):
        compute_window_starts([10, 10, 10], [4, 4, 4], 0.0)
    with pytest.raises(ValueError, match="step_size"):
        compute_window_starts([10, 10, 10], [4, 4, 4], 1.5)


# ---------------------------------------------------------------- Gaussian map


def test_gaussian_map_properties():
    patch_size = [8, 16, 12]
    gaussian = compute_gaussian_importance_map(patch_size)

    assert tuple(gaussian.shape) == tuple(patch_size)
    assert float(gaussian.max()) == pytest.approx(1.0)
    assert float(gaussian.min()) > 0.0
    for axis in range(3):
        assert torch.equal(gaussian, torch.flip(gaussian, (axis,))), f"not symmetric along axis {axis}"

    # The centre outweighs the corner by orders of magnitude (sigma = patch / 8).
    assert float(gaussian[0, 0, 0]) < 1e-6
    assert float(gaussian[3:5, 7:9, 5:7].min()) > 0.9


def test_gaussian_map_clips_underflow():
    # A tiny sigma makes the edges underflow to zero in float32; they must stay positive.
    gaussian = compute_gaussian_importance_map([64, 64, 64], sigma_scale=0.01)

    assert float(gaussian.min()) > 0.0


# ---------------------------------------------------------------- prediction


def test_prediction_matches_full_volume_network():
    network = _pointwise_network()
    data = torch.randn(1, 12, 30, 41)

    predicted = predict_sliding_window(network, data, [8, 16, 16], num_classes=3, step_size=0.5)

    with torch.no_grad():
        expected = F.softmax(network(data[None]), dim=1)[0]
    assert predicted.shape == (3, 12, 30, 41)
    assert predicted.dtype == torch.float32
    torch.testing.assert_close(predicted, expected, atol=1e-5, rtol=1e-5)


def test_prediction_sums_to_one():
    torch.manual_seed(1)
    network = nn.Conv3d(1, 4, kernel_size=3, padding=1).eval()
    data = torch.randn(1, 10, 21, 19)

    predicted = predict_sliding_window(network, data, [6, 12, 12], num_classes=4, mirror_axes=(1, 2))

    torch.testing.assert_close(predicted.sum(0), torch.ones(10, 21, 19), atol=1e-5, rtol=1e-5)
    assert float(predicted.min()) >= 0.0


def test_every_voxel_seen_by_windows():
    network = _CoverageNetwork(num_classes=2)
    data = torch.arange(1 * 11 * 23 * 17, dtype=torch.float32).reshape(1, 11, 23, 17)

    predict_sliding_window(network, data, [5, 8, 8], num_classes=2, step_size=0.5, batch_size=3)

    seen = set()
    for batch in network.inputs:
        seen.update(int(v) for v in batch.flatten().tolist())
    assert seen == set(int(v) for v in data.flatten().tolist())


def test_small_input_padded_and_cropped():
    network = _CoverageNetwork(num_classes=2)
    data = torch.randn(1, 3, 5, 7)

    predicted = predict_sliding_window(network, data, [8, 16, 16], num_classes=2)

    assert predicted.shape == (2, 3, 5, 7)
    assert len(network.inputs) == 1
    assert tuple(network.inputs[0].shape) == (1, 1, 8, 16, 16)
    # The original voxels sit inside the padded window unchanged.
    window = network.inputs[0][0]
    assert torch.isclose(window.sum(), data.sum(), atol=1e-4)


def test_small_input_matches_full_volume_network():
    network = _pointwise_network(num_classes=2)
    data = torch.randn(1, 4, 20, 6)

    predicted = predict_sliding_window(network, data, [8, 8, 8], num_classes=2)

    with torch.no_grad():
        expected = F.softmax(network(data[None]), dim=1)[0]
    torch.testing.assert_close(predicted, expected, atol=1e-5, rtol=1e-5)


def test_mirroring_symmetric_network_unchanged():
    # A pointwise network commutes with flips, so mirroring over any axes changes nothing.
    network = _pointwise_network()
    data = torch.randn(1, 10, 20, 20)

    plain = predict_sliding_window(network, data, [8, 12, 12], num_classes=3)
    mirrored = predict_sliding_window(network, data, [8, 12, 12], num_classes=3, mirror_axes=(0, 1, 2))

    torch.testing.assert_close(mirrored, plain, atol=1e-5, rtol=1e-5)


def test_mirroring_averages_all_combinations():
    torch.manual_seed(3)
    network = nn.Conv3d(1, 2, kernel_size=3, padding=1).eval()
    data = torch.randn(1, 8, 12, 12)
    mirror_axes = (1, 2)

    # The patch equals the image, so there is one window and the Gaussian cancels out.
    predicted = predict_sliding_window(network, data, [8, 12, 12], num_classes=2, mirror_axes=mirror_axes)

    expected = torch.zeros(2, 8, 12, 12)
    combinations = [subset for count in range(3) for subset in itertools.combinations(mirror_axes, count)]
    with torch.no_grad():
        for subset in combinations:
            dims = tuple(axis + 2 for axis in subset)
            flipped = torch.flip(data[None], dims) if dims else data[None]
            probabilities = F.softmax(network(flipped), dim=1)
            expected += (torch.flip(probabilities, dims) if dims else probabilities)[0]
    expected /= len(combinations)
    torch.testing.assert_close(predicted, expected, atol=1e-5, rtol=1e-5)
    assert len(combinations) == 4


def test_mirroring_only_allowed_axes():
    network = _CoverageNetwork(num_classes=2)
    data = torch.randn(1, 8, 8, 8)

    predict_sliding_window(network, data, [8, 8, 8], num_classes=2, mirror_axes=(0,))

    assert len(network.inputs) == 2
    torch.testing.assert_close(network.inputs[0][0], data)
    torch.testing.assert_close(network.inputs[1][0], torch.flip(data, (1,)))


def test_deep_supervision_uses_first_output():
    network = _pointwise_network()

    def deep_supervision_network(x):
        logits = network(x)
        return [logits, F.avg_pool3d(logits, 2)]

    data = torch.randn(1, 8, 16, 16)
    predicted = predict_sliding_window(deep_supervision_network, data, [8, 8, 8], num_classes=3)

    with torch.no_grad():
        expected = F.softmax(network(data[None]), dim=1)[0]
    torch.testing.assert_close(predicted, expected, atol=1e-5, rtol=1e-5)


def test_prediction_is_deterministic():
    torch.manual_seed(5)
    network = nn.Conv3d(1, 3, kernel_size=3, padding=1).eval()
    data = torch.randn(1, 9, 25, 22)

    first = predict_sliding_window(network, data, [6, 10, 10], num_classes=3, mirror_axes=(0, 2), batch_size=2)
    second = predict_sliding_window(network, data, [6, 10, 10], num_classes=3, mirror_axes=(0, 2), batch_size=2)

    assert torch.equal(first, second)


def test_batch_size_does_not_change_result():
    torch.manual_seed(6)
    network = nn.Conv3d(1, 3, kernel_size=3, padding=1).eval()
    data = torch.randn(1, 9, 25, 22)

    single = predict_sliding_window(network, data, [6, 10, 10], num_classes=3, batch_size=1)
    batched = predict_sliding_window(network, data, [6, 10, 10], num_classes=3, batch_size=4)

    torch.testing.assert_close(single, batched, atol=1e-6, rtol=1e-6)


def test_cpu_accumulation_matches_device():
    network = _pointwise_network()
    data = torch.randn(1, 8, 20, 20)

    on_device = predict_sliding_window(network, data, [8, 12, 12], num_classes=3)
    on_cpu = predict_sliding_window(network, data, [8, 12, 12], num_classes=3, accumulate_on_device=False)

    assert torch.equal(on_device, on_cpu)


def test_wrong_channel_count_rejected():
    network = _pointwise_network(num_classes=2)

    with pytest.raises(ValueError, match="expected 3 channels"):
        predict_sliding_window(network, torch.randn(1, 8, 8, 8), [8, 8, 8], num_classes=3)


def test_invalid_arguments_rejected():
    network = _pointwise_network()
    data = torch.randn(1, 8, 8, 8)

    with pytest.raises(ValueError, match="Patch size"):
        predict_sliding_window(network, data, [8, 8], num_classes=3)
    with pytest.raises(ValueError, match="mirror axis"):
        predict_sliding_window(network, data, [8, 8, 8], num_classes=3, mirror_axes=(3,))
    with pytest.raises(ValueError, match="batch_size"):
        predict_sliding_window(network, data, [8, 8, 8], num_classes=3, batch_size=0)
