"""Tests of the shared training infrastructure: checkpoints, devices, schedules, logs, data loading, CLI."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from ortho_nnd.training import checkpoint as checkpoint_module
from ortho_nnd.training.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from ortho_nnd.training.data import (
    MirrorAugmentation,
    PatchDataLoader,
    PreprocessedDataset,
    close_batch_iterator,
    crop_with_padding,
    list_preprocessed_cases,
    make_batch_iterator,
    shard_case_ids,
)
from ortho_nnd.training.device import autocast_context, maybe_compile, resolve_device
from ortho_nnd.training.logs import ProgressTracker, add_log_file, remove_log_file
from ortho_nnd.training.lr_schedule import WarmupDecaySchedule, lr_factor
from ortho_nnd.training.nonfinite import NonFiniteGuard, NonFiniteLossError

from training_fixtures import PLANS_NAME, make_preprocessed_dataset


@pytest.fixture(autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------- checkpoints


def test_checkpoint_roundtrip_weights_only(tmp_path):
    payload = {"weights": {"a": torch.arange(6.0).reshape(2, 3)}, "iteration": 7, "name": "x", "values": [1.5, None]}
    path = save_checkpoint(tmp_path / "sub" / "checkpoint.pth", payload)

    loaded = load_checkpoint(path)

    assert torch.equal(loaded["weights"]["a"], payload["weights"]["a"])
    assert loaded["iteration"] == 7
    assert loaded["values"] == [1.5, None]
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pth"]


def test_checkpoint_failed_save_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_latest.pth"
    save_checkpoint(path, {"iteration": 1, "w": torch.ones(3)})

    def failing_save(obj, stream):
        stream.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"iteration": 2, "w": torch.zeros(3)})
    monkeypatch.undo()

    loaded = load_checkpoint(path)
    assert loaded["iteration"] == 1
    assert torch.equal(loaded["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_latest.pth"]


def test_checkpoint_missing_file_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.pth")


def test_checkpoint_corrupt_file_error(tmp_path):
    path = tmp_path / "broken.pth"
    save_checkpoint(path, {"w": torch.ones(100)})
    path.write_bytes(path.read_bytes()[:50])

    with pytest.raises(CheckpointError, match="broken.pth"):
        load_checkpoint(path)


def test_checkpoint_rejects_pickled_objects(tmp_path):
    path = tmp_path / "object.pth"
    torch.save({"object": Path("/tmp")}, path)

    with pytest.raises(CheckpointError, match="JSON-compatible"):
        load_checkpoint(path)


def test_rng_state_roundtrip_through_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    save_checkpoint(tmp_path / "rng.pth", {"rng_state": capture_rng_state()})
    expected = (random.random(), np.random.rand(), torch.rand(1).item(), np.random.randn())

    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    restore_rng_state(load_checkpoint(tmp_path / "rng.pth")["rng_state"])
    actual = (random.random(), np.random.rand(), torch.rand(1).item(), np.random.randn())

    assert actual == expected


# ---------------------------------------------------------------------- device


def test_resolve_device_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cuda", "mps", "cpu")


def test_resolve_device_invalid_name():
    with pytest.raises(ValueError, match="Invalid device 'tpu'"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resolve_device_absent_cuda():
    with pytest.raises(ValueError, match="'cuda' was requested"):
        resolve_device("cuda")


def test_autocast_context_is_noop_on_cpu():
    layer = torch.nn.Linear(4, 4)
    with autocast_context(torch.device("cpu")):
        output = layer(torch.ones(1, 4))
    assert output.dtype == torch.float32


def test_maybe_compile_disabled_returns_model():
    layer = torch.nn.Linear(2, 2)
    assert maybe_compile(layer, enabled=False) is layer


def test_maybe_compile_falls_back_on_error(monkeypatch, caplog):
    def broken_compile(model):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(torch, "compile", broken_compile)
    layer = torch.nn.Linear(2, 2)
    assert maybe_compile(layer, enabled=True) is layer
    assert "no compiler" in caplog.text


# ---------------------------------------------------------------------- learning-rate schedule


def test_lr_warmup_then_cosine_to_zero():
    factors = [lr_factor(i, 110, 10, "cosine") for i in range(110)]

    assert factors[0] == pytest.approx(0.1)
    assert factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0)
    assert factors[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))


def test_lr_poly_decay_midpoint():
    # (1 - 0.5)^0.9 halfway through a poly decay without warm-up.
    assert lr_factor(50, 101, 0, "poly") == pytest.approx(0.5**0.9)


def test_lr_invalid_settings():
    with pytest.raises(ValueError, match="Invalid learning-rate decay"):
        lr_factor(0, 10, 0, "step")
    with pytest.raises(ValueError, match="warmup_iterations"):
        lr_factor(0, 10, 10, "cosine")


def test_lr_schedule_keeps_group_ratio():
    head, backbone = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW([{"params": head.parameters()}, {"params": backbone.parameters(), "lr": 1e-4}], lr=1e-3)
    schedule = WarmupDecaySchedule(optimizer, total_iterations=20, warmup_iterations=5, decay="cosine")

    for iteration in (0, 4, 12, 19):
        rates = schedule.step(iteration)
        assert rates[1] == pytest.approx(rates[0] * 0.1)
    assert optimizer.param_groups[0]["base_lr"] == 1e-3


# ---------------------------------------------------------------------- logs and guard


def test_progress_tracker_json_and_plot(tmp_path):
    tracker = ProgressTracker()
    for iteration in range(1, 6):
        tracker.record(iteration, 1.0 / iteration, 1e-3, val_metric=0.5 if iteration == 5 else None)
    tracker.record(6, float("nan"), 1e-3)

    tracker.save_json(tmp_path / "training_log.json")
    tracker.plot(tmp_path / "progress.png")

    stored = json.loads((tmp_path / "training_log.json").read_text(encoding="utf-8"))
    assert stored["iteration"] == [1, 2, 3, 4, 5, 6]
    assert stored["loss"][5] is None
    assert stored["val_metric"] == [None, None, None, None, 0.5, None]
    assert (tmp_path / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    restored = ProgressTracker()
    restored.load_state_dict(stored)
    assert len(restored) == 6


def test_log_file_receives_package_logs(tmp_path):
    import logging

    path = add_log_file(tmp_path)
    logging.getLogger("ortho_nnd.training.test").info("hello log file")
    remove_log_file(path)

    assert path.name.startswith("training_log_")
    assert "hello log file" in path.read_text(encoding="utf-8")


def test_nonfinite_guard_counts_and_raises(caplog):
    guard = NonFiniteGuard(max_consecutive=2)

    assert guard.check(0, 1.0, ["a"])
    assert not guard.check(1, math.nan, ["case_bad"])
    assert "case_bad" in caplog.text
    assert guard.check(2, 0.5, ["a"])
    assert not guard.check(3, math.inf, ["b"])
    with pytest.raises(NonFiniteLossError, match="2 consecutive"):
        guard.check(4, math.nan, ["c"])


# ---------------------------------------------------------------------- data


@pytest.fixture
def tiny_dataset(tmp_path):
    folder = make_preprocessed_dataset(tmp_path, num_cases=3, num_unlabeled=2, shapes=[[10, 20, 18]] * 3 + [[4, 12, 30], [10, 20, 18]])
    return folder / f"{PLANS_NAME}_sagittal"


def test_list_cases_by_source(tiny_dataset):
    assert list_preprocessed_cases(tiny_dataset) == [f"case_{i:03d}" for i in range(5)]
    assert list_preprocessed_cases(tiny_dataset, sources=["imagesUnlabeled"]) == ["case_003", "case_004"]


def test_list_cases_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="ortho_plan_and_preprocess"):
        list_preprocessed_cases(tmp_path / "absent")


def test_dataset_unknown_case(tiny_dataset):
    with pytest.raises(FileNotFoundError, match="case_999"):
        PreprocessedDataset(tiny_dataset, ["case_000", "case_999"])


def test_shard_case_ids():
    cases = [f"c{i}" for i in range(5)]
    assert shard_case_ids(cases, 0, 2) == ["c0", "c2", "c4"]
    assert shard_case_ids(cases, 1, 2) == ["c1", "c3"]
    assert shard_case_ids(["only"], 1, 2) == ["only"]


def test_crop_with_padding_centres_small_scan():
    array = np.arange(2 * 3 * 4, dtype=np.float32).reshape(1, 2, 3, 4)

    cropped = crop_with_padding(array, [-1, 0, -2], [4, 3, 8], pad_value=-5.0)

    assert cropped.shape == (1, 4, 3, 8)
    assert np.array_equal(cropped[:, 1:3, :, 2:6], array)
    assert np.all(cropped[:, 0] == -5.0)


def test_patch_loader_pads_small_cases(tiny_dataset):
    dataset = PreprocessedDataset(tiny_dataset, ["case_003"])
    loader = PatchDataLoader(dataset, [8, 16, 16], batch_size=2, seed=0)

    batch = next(make_batch_iterator(loader, 0))

    assert batch["data"].shape == (2, 1, 8, 16, 16)
    assert batch["data"].dtype == torch.float32
    assert batch["keys"] == ["case_003", "case_003"]
    # The scan has 4 slices along Z, so at least 4 of 8 patch slices are padding (zeros).
    zero_slices = (batch["data"][0, 0].abs().sum(dim=(1, 2)) == 0).sum()
    assert zero_slices >= 4


def test_patch_loader_foreground_oversampling(tiny_dataset):
    dataset = PreprocessedDataset(tiny_dataset, ["case_000", "case_001", "case_002"])
    loader = PatchDataLoader(dataset, [4, 4, 4], batch_size=8, foreground_probability=1.0, load_target=True, seed=3)

    batch = loader.generate_train_batch()

    assert batch["target"].shape == (8, 1, 4, 4, 4)
    assert batch["target"].dtype == torch.int16
    assert all(int((sample > 0).sum()) > 0 for sample in batch["target"])


def test_patch_loader_batches_depend_on_index_only(tiny_dataset):
    dataset = PreprocessedDataset(tiny_dataset)
    first = PatchDataLoader(dataset, [8, 16, 16], 2, augment=MirrorAugmentation([0]), seed=7)
    batches = [first.generate_train_batch() for _ in range(4)]

    continued = PatchDataLoader(dataset, [8, 16, 16], 2, augment=MirrorAugmentation([0]), seed=7, start_iteration=2)
    later = [continued.generate_train_batch() for _ in range(2)]

    for expected, actual in zip(batches[2:], later):
        assert expected["keys"] == actual["keys"]
        assert torch.equal(expected["data"], actual["data"])
    assert not torch.equal(batches[0]["data"], batches[1]["data"])


def test_patch_loader_rank_shards(tiny_dataset):
    dataset = PreprocessedDataset(tiny_dataset)
    rank1 = PatchDataLoader(dataset, [8, 16, 16], 4, seed=0, rank=1, world_size=2)

    keys = {key for _ in range(5) for key in rank1.generate_train_batch()["keys"]}

    assert keys <= {"case_001", "case_003"}


def test_mirror_augmentation_flips_selected_axis():
    data = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 1, 2, 3, 4)
    target = data.clone().to(torch.int16)
    # Use a seed whose first draw is below 0.5, so the single axis is flipped.
    seed = next(s for s in range(100) if np.random.default_rng(s).random() < 0.5)
    rng = np.random.default_rng(seed)

    batch = MirrorAugmentation([2])({"data": data.clone(), "target": target.clone()}, rng)

    assert torch.equal(batch["data"], torch.flip(data, [4]))
    assert torch.equal(batch["target"], torch.flip(target, [4]))


def test_mirror_augmentation_invalid_axis():
    with pytest.raises(ValueError, match="Invalid mirror axis 3"):
        MirrorAugmentation([3])


def test_background_workers_match_in_process(tiny_dataset):
    dataset = PreprocessedDataset(tiny_dataset)
    in_process = PatchDataLoader(dataset, [8, 16, 16], 2, seed=5, start_iteration=3)
    expected = [in_process.generate_train_batch() for _ in range(4)]

    workers = PatchDataLoader(dataset, [8, 16, 16], 2, seed=5, start_iteration=3, num_workers=2)
    iterator = make_batch_iterator(workers, num_workers=2, seed=5, deterministic=True)
    try:
        actual = [next(iterator) for _ in range(4)]
    finally:
        close_batch_iterator(iterator)

    for expected_batch, actual_batch in zip(expected, actual):
        assert expected_batch["keys"] == actual_batch["keys"]
        assert torch.equal(expected_batch["data"], actual_batch["data"])


# ---------------------------------------------------------------------- command line


def test_cli_rejects_bad_view(capsys):
    from ortho_nnd.cli.train import main

    with pytest.raises(SystemExit):
        main(["101", "pretrain", "lateral"])
    assert "pretrain needs a view" in capsys.readouterr().err


def test_cli_iterations_and_epochs_exclusive(capsys):
    from ortho_nnd.cli.train import main

    with pytest.raises(SystemExit):
        main(["101", "pretrain", "axial", "--iterations", "5", "--epochs", "2"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_cli_routes_seg_to_fine_tuning(monkeypatch):
    import sys
    import types

    from ortho_nnd.cli.train import main

    received = {}
    module = types.ModuleType("ortho_nnd.training.seg_trainer")
    module.run_segmentation_training = lambda args: received.setdefault("args", args)
    monkeypatch.setitem(sys.modules, "ortho_nnd.training.seg_trainer", module)

    assert main(["101", "seg", "fold2", "--view", "sagittal", "--label_fraction", "0.5", "--mode", "linear_probe"]) == 0
    args = received["args"]
    assert (args.task_arg, args.view, args.label_fraction, args.mode) == ("fold2", "sagittal", 0.5, "linear_probe")
