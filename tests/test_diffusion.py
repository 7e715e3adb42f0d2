"""Tests of the noise schedules, the diffusion loss and the weight EMA."""
import pytest
import torch
from torch import nn

from ortho_nnd.diffusion import DiffusionSchedule, ExponentialMovingAverage, diffusion_loss, unwrap_model
from ortho_nnd.network import DiffusionUNet


@pytest.fixture(autouse=True)
def _single_thread():
    """Run on one thread: on a shared 2-core machine, two threads are many times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

TINY_KWARGS = {
    "in_channels": 1,
    "out_channels": 1,
    "features_per_stage": [8, 16],
    "kernel_sizes": [[3, 3, 3], [3, 3, 3]],
    "strides": [[1, 1, 1], [2, 2, 2]],
    "n_blocks_per_stage": [1, 1],
    "n_blocks_per_stage_decoder": [1],
    "attention_stages": [False, True],
    "attention_heads": 2,
    "time_embed_dim": 16,
}


@pytest.mark.parametrize("schedule_name", ["cosine", "linear"])
@pytest.mark.parametrize("num_timesteps", [1000, 50])
def test_schedule_alpha_bar_properties(schedule_name, num_timesteps):
    schedule = DiffusionSchedule(num_timesteps, schedule_name)
    alpha_bar = schedule.alphas_cumprod

    assert alpha_bar.shape == (num_timesteps,)
    assert torch.all(alpha_bar > 0)
    assert torch.all(alpha_bar < 1)
    assert torch.all(alpha_bar[1:] < alpha_bar[:-1])
    assert torch.all(schedule.betas <= 0.999)
    # Nearly clean at t = 0, nearly pure noise at t = T - 1.
    assert alpha_bar[0] > 0.99
    assert alpha_bar[-1] < 0.01


def test_cosine_schedule_matches_formula():
    schedule = DiffusionSchedule(1000, "cosine")
    s = 0.008

    def f(t):
        return torch.cos(torch.tensor(((t / 1000 + s) / (1 + s)) * torch.pi / 2, dtype=torch.float64)) ** 2

    # Before the clip at 0.999 matters, alpha_bar(t) = f(t + 1) / f(0) (index t is after t + 1 steps).
    for t in [0, 100, 500, 900]:
        torch.testing.assert_close(schedule.alphas_cumprod[t], f(t + 1) / f(0))


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_targets_recover_x0_and_noise(prediction):
    schedule = DiffusionSchedule(1000, "cosine")
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 1, 4, 4, 4, generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    t = torch.tensor([0, 10, 500, 980])

    x_t = schedule.q_sample(x0, t, noise)
    target = schedule.training_target(x0, noise, t, prediction)

    torch.testing.assert_close(schedule.predict_x0(x_t, t, target, prediction), x0, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(schedule.predict_epsilon(x_t, t, target, prediction), noise, rtol=1e-4, atol=1e-4)


def test_schedule_invalid_input_raises():
    with pytest.raises(ValueError, match="schedule"):
        DiffusionSchedule(10, "quadratic")
    with pytest.raises(ValueError, match="num_timesteps"):
        DiffusionSchedule(0)
    schedule = DiffusionSchedule(10)
    x0 = torch.zeros(2, 1, 2, 2, 2)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        schedule.q_sample(x0, torch.tensor([0, 10]), x0)
    with pytest.raises(ValueError, match="integer"):
        schedule.q_sample(x0, torch.tensor([0.5, 1.0]), x0)
    with pytest.raises(ValueError, match="prediction"):
        schedule.training_target(x0, x0, torch.tensor([0, 1]), "x0")


def test_sample_timesteps_uniform_and_seeded():
    schedule = DiffusionSchedule(20)
    first = schedule.sample_timesteps(4000, torch.Generator().manual_seed(1))
    second = schedule.sample_timesteps(4000, torch.Generator().manual_seed(1))

    assert first.dtype == torch.long
    assert torch.equal(first, second)
    assert int(first.min()) == 0
    assert int(first.max()) == 19
    # Each of the 20 values expects 200 draws, and 120 is more than 5 standard deviations below.
    assert torch.bincount(first, minlength=20).min() > 120


def test_diffusion_loss_info_and_shape_check():
    torch.manual_seed(0)
    network = DiffusionUNet(**TINY_KWARGS)
    schedule = DiffusionSchedule(100)
    x0 = torch.randn(3, 1, 4, 8, 8)

    loss, info = diffusion_loss(network, x0, schedule, "epsilon", torch.Generator().manual_seed(0))

    # Zero-initialised output: the prediction is 0 and the loss is the mean squared noise.
    assert 0.8 < loss.item() < 1.2
    assert info["timesteps"].shape == (3,)
    assert info["loss_per_sample"].shape == (3,)

    wrong_channels = DiffusionUNet(**{**TINY_KWARGS, "out_channels": 2})
    with pytest.raises(ValueError, match="out_channels"):
        diffusion_loss(wrong_channels, x0, schedule, "epsilon")


def _evaluation_loss(network, x0, schedule, prediction):
    """Mean loss over a fixed set of timesteps and noise, so two evaluations are comparable."""
    generator = torch.Generator().manual_seed(123)
    with torch.no_grad():
        losses = [float(diffusion_loss(network, x0, schedule, prediction, generator)[0]) for _ in range(8)]
    return sum(losses) / len(losses)


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_tiny_overfit_reduces_loss(prediction):
    torch.manual_seed(0)
    network = DiffusionUNet(**TINY_KWARGS)
    schedule = DiffusionSchedule(100, "cosine")
    grid = torch.linspace(-1, 1, 8)
    # Two smooth, distinct volumes that the network can memorise.
    x0 = torch.stack([
        torch.sin(3 * grid)[None, None, :] * torch.cos(2 * grid)[None, :, None] * torch.ones(4, 1, 1),
        (grid[None, None, :] + grid[None, :, None]) * torch.ones(4, 1, 1),
    ])[:, None]
    optimizer = torch.optim.AdamW(network.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)

    initial = _evaluation_loss(network, x0, schedule, prediction)
    for _ in range(250):
        loss, _ = diffusion_loss(network, x0, schedule, prediction, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    final = _evaluation_loss(network, x0, schedule, prediction)

    # Bar: training must remove at least half of the initial loss.
    assert final < 0.5 * initial, f"initial {initial:.3f}, final {final:.3f}"


def test_ema_warmup_update_and_copy():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = ExponentialMovingAverage(model, decay=0.99)

    # Warm-up: the first decay is min(0.99, 1 / 10).
    assert ema.current_decay() == pytest.approx(0.1)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update()
    torch.testing.assert_close(ema.shadow["weight"], torch.full((1, 2), 0.9))

    ema.copy_to(model)
    torch.testing.assert_close(model.weight.detach(), torch.full((1, 2), 0.9))
    for _ in range(1000):
        ema.update()
    assert ema.current_decay() == pytest.approx(0.99)


def test_ema_state_dict_roundtrip_and_ddp_unwrap():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    wrapped = nn.DataParallel(model)
    ema = ExponentialMovingAverage(wrapped, decay=0.9)
    assert unwrap_model(wrapped) is model
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update(wrapped)

    state = ema.state_dict()
    restored = ExponentialMovingAverage(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), decay=0.5)
    restored.load_state_dict(state)

    assert restored.num_updates == 1
    assert restored.decay == 0.9
    torch.testing.assert_close(restored.shadow["0.weight"], ema.shadow["0.weight"])
    # The averaged weights load into a plain network, buffers included.
    nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).load_state_dict(state["weights"])
    with pytest.raises(ValueError, match="shape"):
        ExponentialMovingAverage(nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5))).load_state_dict(state)
