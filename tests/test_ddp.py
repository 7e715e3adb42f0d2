"""DDP pretraining with two gloo processes on the CPU (loopback only)."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from ortho_nnd.training.base_trainer import FINAL_CHECKPOINT, TrainerSettings
from ortho_nnd.training.checkpoint import load_checkpoint

from training_fixtures import PLANS_NAME, make_preprocessed_dataset, tiny_view_plans

WORLD_SIZE = 2
ITERATIONS = 4
# Iteration index at which rank 1 feeds a NaN batch, to check that both ranks skip the step.
NAN_ITERATION = 1


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ddp_worker(rank: int, port: int, data_folder: str, output_folder: str, report_folder: str) -> None:
    """Run one rank of a pretraining job and write its final weights and write calls to report_folder."""
    torch.set_num_threads(1)
    os.environ.update({
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(WORLD_SIZE),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    })

    from ortho_nnd.training import base_trainer
    from ortho_nnd.training.pretrain import PretrainTrainer

    class NaNOnRankOneTrainer(PretrainTrainer):
        def compute_loss(self, batch):
            if self.rank == 1 and self.iteration == NAN_ITERATION:
                # Change the batch in place, because the trainer logs the keys of the batch it passed in.
                batch["data"] = torch.full_like(batch["data"], float("nan"))
                batch["keys"] = ["nan_case_rank1"]
            return super().compute_loss(batch)

    written: list[str] = []
    original_save = base_trainer.save_checkpoint

    def recording_save(path, payload):
        written.append(Path(path).name)
        return original_save(path, payload)

    base_trainer.save_checkpoint = recording_save

    settings = TrainerSettings(
        output_folder=Path(output_folder), total_iterations=ITERATIONS, learning_rate=3e-3, warmup_iterations=1,
        checkpoint_every=2, device="cpu", seed=0,
    )
    trainer = NaNOnRankOneTrainer(
        settings, view_plans=tiny_view_plans("sagittal"), view="sagittal", dataset_name="Dataset999_Tiny",
        data_folder=Path(data_folder), case_ids=["case_000", "case_001", "case_002", "case_003"],
    )
    trainer.run()

    weights = {name: tensor.detach().clone() for name, tensor in trainer.network.state_dict().items()}
    ema = trainer.ema.averaged_state_dict()
    torch.save({"weights": weights, "ema": ema}, Path(report_folder) / f"rank{rank}.pth")
    report = {"rank": trainer.rank, "world_size": trainer.world_size, "written": written,
              "log_file": str(trainer.log_file) if trainer.log_file else None}
    (Path(report_folder) / f"rank{rank}.json").write_text(json.dumps(report), encoding="utf-8")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
def test_ddp_two_gloo_ranks(tmp_path):
    data_folder = make_preprocessed_dataset(tmp_path / "pre", num_cases=4) / f"{PLANS_NAME}_sagittal"
    output_folder, report_folder = tmp_path / "out", tmp_path / "reports"
    report_folder.mkdir()

    mp.spawn(
        ddp_worker,
        args=(free_loopback_port(), str(data_folder), str(output_folder), str(report_folder)),
        nprocs=WORLD_SIZE,
        join=True,
    )

    reports = [json.loads((report_folder / f"rank{r}.json").read_text(encoding="utf-8")) for r in range(WORLD_SIZE)]
    assert [report["world_size"] for report in reports] == [WORLD_SIZE, WORLD_SIZE]
    assert reports[0]["written"] == ["checkpoint_latest.pth", "checkpoint_final.pth"]
    assert reports[1]["written"] == []
    assert reports[0]["log_file"] is not None
    assert reports[1]["log_file"] is None
    log_files = list(output_folder.glob("training_log_*.txt"))
    assert len(log_files) == 1
    # Rank 0 logs the skipped step with the case ids of both ranks.
    log_text = log_files[0].read_text(encoding="utf-8")
    assert "nan_case_rank1" in log_text
    assert "step skipped" in log_text

    rank0 = torch.load(report_folder / "rank0.pth", weights_only=True)
    rank1 = torch.load(report_folder / "rank1.pth", weights_only=True)
    for key in ("weights", "ema"):
        for name, tensor in rank0[key].items():
            assert torch.equal(tensor, rank1[key][name]), f"{key}.{name} differs between ranks"

    final = load_checkpoint(output_folder / FINAL_CHECKPOINT)
    assert final["iteration"] == ITERATIONS
    assert all(torch.equal(final["network_weights"][n], t) for n, t in rank0["weights"].items())
    # One of the ITERATIONS steps was skipped on both ranks, so it has no loss entry.
    assert len(final["progress"]["loss"]) == ITERATIONS - 1
