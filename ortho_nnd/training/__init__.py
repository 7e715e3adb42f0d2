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

Fine-tuning:

- ``finetune_setup``: dataset context, splits, output folder and settings shared by both tasks.
- ``splits``: subject-grouped, finding-stratified folds in ``splits_final.json``.
- ``label_fraction``: seeded, stratified subsets of a fold's labelled training cases.
- ``augmentation``: batchgeneratorsv2 transforms for segmentation.
- ``transfer``: checks and loads pretraining from another dataset before training starts.
- ``seg_trainer``: segmentation (``ortho_train DATASET seg FOLD``).
- ``cls_data`` and ``cls_trainer``: three-view diagnosis (``ortho_train DATASET cls FOLD``).

Submodules are not imported here, so importing ``ortho_nnd.training`` stays cheap.
"""
