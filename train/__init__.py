"""Training: typed config, DeepSpeed config resolution, schedules, the trainer, checkpoints, export.

    config.py       TrainConfig and its parts; load_train_config (defaults < YAML < key=value)
    ds_config.py    resolve_ds_config: fills "auto", checks batch arithmetic, rejects unknown keys
    schedules.py    beta_at / lr_at, pure functions of the step
    engine.py       the DeepSpeed engine around a Seq2SeqVAE (built under zero.Init for ZeRO-3)
    freezing.py     per-phase freezing of parameter groups on one engine
    trainer.py      Trainer (train_step, validate, save, resume) and run(config) -> summary dict
    checkpoint.py   save/load with client state, atomic `latest`, keep-last-K
    signals.py      SIGUSR1/SIGTERM -> save and exit REQUEUE_EXIT_CODE (75)
    monitor.py      TensorBoard, metrics.jsonl and the progress bar (rank 0)
    distributed.py  process-group setup with a finite collective timeout
    export.py       seq2vae export: ZeRO checkpoint -> save_pretrained directory
    cli.py          seq2vae train / python -m seq2vae.train

Nothing here is imported by `seq2vae.model`, which stays free of DeepSpeed.
"""
