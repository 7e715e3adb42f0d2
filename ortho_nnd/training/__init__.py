"""Training: data loading, the shared trainer loop, checkpoints, DDP, pretraining and fine-tuning.

Shared infrastructure (see each module's docstring for its API):

- ``checkpoint``: atomic ``save_checkpoint`` / ``load_checkpoint`` (weights_only) and RNG state.
- ``distributed``: torchrun process group, ``wrap_ddp``, collectives, ``is_main_process``.
- ``device``: ``resolve_device``, bf16 ``autocast_context``, ``maybe_compile``, ``set_deterministic``.
- ``logs``: timestamped log file and ``ProgressTracker`` (training_log.json, progress.png).
- ``lr_schedule``: warm-up + cosine/poly ``WarmupDecaySchedule``.
- ``data``: ``PreprocessedDataset``, ``PatchDataLoader``, ``MirrorAugmentation``, ``make_batch_iterator``.
- ``nonfinite``: ``NonFiniteGuard`` that skips steps with non-finite loss or gradients.
- ``base_trainer``: ``BaseTrainer`` and ``TrainerSettings``.
- ``pretrain``: diffusion pretraining (``ortho_train DATASET pretrain VIEW``).

Submodules are not imported here, so importing ``ortho_nnd.training`` stays cheap.
"""
