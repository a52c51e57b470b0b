"""Training: typed config, DeepSpeed config resolution, schedules, the trainer and its engine.

    config.py       TrainConfig and its parts; load_train_config (defaults < YAML < key=value)
    ds_config.py    resolve_ds_config: fills "auto", checks batch arithmetic, rejects unknown keys
    schedules.py    beta_at / lr_at, pure functions of the step
    engine.py       the DeepSpeed engine around a Seq2SeqVAE (built under zero.Init for ZeRO-3)
    guarded_step.py stage 0 (no ZeRO): clipping and the non-finite skip ZeRO's optimizers have
    freezing.py     per-phase freezing of parameter groups on one engine
    trainer.py      Trainer (train_step, validate, save, resume) and run(config) -> summary dict
    signals.py      SIGUSR1/SIGTERM -> save and exit REQUEUE_EXIT_CODE (75)
    monitor.py      TensorBoard, metrics.jsonl and the progress bar (rank 0)
    capacity.py     a TrainConfig as the planner's plain inputs (`seq2vae plan`, the SLURM job check)
    cli.py          seq2vae train / python -m seq2vae.train

Checkpoints, export and init_from live in `seq2vae.checkpoint`; process groups in `seq2vae.distributed`.
Nothing here is imported by `seq2vae.model`, which stays free of DeepSpeed.
"""
