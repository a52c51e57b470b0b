"""GPU smoke matrix: real training runs on the visible GPUs of one node, against the planner.

For each DeepSpeed preset (default: bf16 ZeRO-2 and ZeRO-3) this trains a randomly initialised
t5-large-shaped VAE (Flan-T5-large dims, ~780M parameters) on synthetic shards, one rank per GPU, with
batches sized to about 12k real (non-pad) source + target tokens per GPU per optimizer step, and
records from the run itself:
- tokens/s and MFU of the last logging window (the trainer's perf/ scalars; the first window holds
  warm-up), peak allocated / reserved accelerator memory (max over ranks) against `seq2vae plan`'s
  per-rank estimate for the same config and layout;
- the step-time split (forward, backward, optimizer: CUDA events; data and host waits: host clock)
  and the host-device syncs per step, counted by bench/step_probe.py around the live Trainer;
- padding share of the batches, the final checkpoint's save time.

Every run has its own timeout and the matrix a total budget; OUT/results.json and OUT/results.md
are rewritten after every run, so what was measured survives a failed or killed run.

    bash bench/gpu_smoke.sh [OUT]              # the offline set-up, then this file
    bash bench/gpu_smoke.sh --dry-run [OUT]    # CPU, tiny model, seconds (tests/bench/test_gpu_smoke.py)
    python bench/gpu_smoke.py --out OUT [--presets zero2 zero3] [--budget-s 400] [--dry-run]
    python bench/gpu_smoke.py --check-wheels   # bench/wheels + the GPU image cover every requirement
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WHEELS = REPO / "bench" / "wheels"
IMAGE_PACKAGES = REPO / "bench" / "gpu_image_packages.txt"
PRESETS = ["zero1", "zero2", "zero3", "zero3_hpz", "zero2_offload", "zero3_offload_optimizer", "zero3_offload"]
DEFAULT_PRESETS = ["zero2", "zero3"]
# Flan-T5-large's architecture (untied LM head, gated tanh-GELU FFN), random weights.
T5_LARGE = dict(
    vocab_size=32128, d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_decoder_layers=24, num_heads=16,
    feed_forward_proj="gated-gelu", tie_word_embeddings=False,
)
# The dry run's stand-in: the same code path in seconds on CPU.
T5_TINY = dict(
    vocab_size=1024, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4,
    feed_forward_proj="gated-gelu", tie_word_embeddings=False,
)
GIB = 2**30


# ------------------------------------------------------------------------------------------- inputs
def prepare(out: Path, dry_run: bool) -> dict:
    """Tokenizer, shards and a saved random backbone under OUT/inputs (reused when present)."""
    import torch
    from transformers import T5Config

    from seq2vae.data.shards import write_shards
    from seq2vae.data.synthetic import generate_corpus, write_jsonl
    from seq2vae.data.tokenizer import train_tokenizer
    from seq2vae.model.backbone import backbone_from_config

    inputs = out / "inputs"
    tokenizer_dir, shard_dir = inputs / "tokenizer", inputs / "shards"
    model_dir = inputs / ("t5-tiny" if dry_run else "t5-large-random")
    if not (tokenizer_dir / "tokenizer.json").exists():
        train_tokenizer((row["text"] for row in generate_corpus(3000, seed=0)), tokenizer_dir, vocab_size=1000)
    if not (shard_dir / "meta.json").exists():
        corpus = write_jsonl(inputs / "corpus.jsonl", 3000 if dry_run else 40_000, seed=1)
        write_shards([str(corpus)], shard_dir, str(tokenizer_dir), valid_fraction=0.02, shard_size=2000,
                     max_length=64, progress=False)
    if not (model_dir / "config.json").exists():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        shape = T5_TINY if dry_run else T5_LARGE
        config = T5Config(**shape, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                          decoder_start_token_id=tokenizer.pad_token_id)
        torch.manual_seed(0)
        # Random init of 780M parameters takes seconds on a GPU, minutes on one CPU core.
        # Flan-T5's head is untied: built so (transformers 5 would tie it), and saved with its own values,
        # which the build-time check of the runs requires of an untied checkpoint.
        with torch.device("cuda" if torch.cuda.is_available() and not dry_run else "cpu"):
            model = backbone_from_config(config, untied=True)
        assert not torch.equal(model.lm_head.weight, model.shared.weight)
        model.save_pretrained(model_dir)
        del model
        torch.cuda.empty_cache()  # the runs are other processes: leave them the whole device
    mean_length = mean_sentence_tokens(shard_dir)
    return {"tokenizer": tokenizer_dir, "shards": shard_dir, "backbone": model_dir, "mean_sentence_tokens": mean_length}


def mean_sentence_tokens(shard_dir: Path, sample: int = 4000) -> float:
    import itertools

    from seq2vae.data.stream import read_split

    lengths = [len(row["input_ids"]) for row in itertools.islice(read_split(str(shard_dir), "train"), sample)]
    return sum(lengths) / len(lengths)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ------------------------------------------------------------------------------------------- one run
def run_overrides(preset: str, run_dir: Path, inputs: dict, micro_batch_size: int, steps: int, every: int,
                  precision: str) -> list[str]:
    # One phase (the first, decoder-frozen one skipped): every group trains, and the only checkpoint
    # is the final one (a phase end saves too; ~12 GB each for t5-large).
    return [
        f"model.backbone={inputs['backbone']}", f"model.tokenizer={inputs['tokenizer']}", "model.latent_dim=32",
        f"data.train={inputs['shards']}", f"data.micro_batch_size={micro_batch_size}", "data.num_workers=2",
        "data.length_bucketing=true", "data.shuffle_buffer=4000",
        f"deepspeed={preset}", f"precision={precision}", f"run_dir={run_dir}", "resume=never",
        "phases.0.steps=0", f"phases.1.steps={steps}", f"logging.every_steps={every}",
        "logging.histogram_every=0", "logging.progress_bar=false", "validation.every_steps=0",
        "validation.max_batches=2", "validation.iw_samples=2", "validation.num_reconstructions=0",
        f"checkpoint.every_steps={steps}", "checkpoint.keep_last=2",
    ]


def last_window(metrics_path: Path) -> dict:
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    logged = [record for record in records if "perf/tokens_per_s" in record]
    if not logged:
        raise RuntimeError(f"{metrics_path}: no logging window")
    return logged[-1]  # the first window includes warm-up (NCCL set-up, allocator growth)


def stop_run(process: subprocess.Popen, pid_dir: Path) -> None:
    """torchrun starts each worker in a session of its own: TERM torchrun, then KILL what is left,
    the workers by the pids they wrote."""
    for signal_number, grace_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        pids = [process.pid] + [int(path.read_text()) for path in pid_dir.glob("*.pid") if path.read_text().strip()]
        for pid in pids:
            try:
                os.kill(pid, signal_number)
            except ProcessLookupError:
                pass
        try:
            process.wait(timeout=grace_s)
            if signal_number == signal.SIGKILL or all(not _alive(pid) for pid in pids):
                return
        except subprocess.TimeoutExpired:
            continue


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def run_preset(preset: str, args, inputs: dict, out: Path, ranks: int, timeout_s: float) -> dict:
    run_dir = out / preset
    probe_dir = out / f"{preset}-probe"
    probe_dir.mkdir(parents=True, exist_ok=True)
    tokens_per_sentence = 2 * inputs["mean_sentence_tokens"]  # the source and its reconstruction target
    micro_batch_size = args.micro_batch_size or max(1, round(args.tokens_per_gpu / tokens_per_sentence))
    overrides = run_overrides(preset, run_dir, inputs, micro_batch_size, args.steps, args.every, args.precision)
    worker = [str(Path(__file__).resolve()), "--worker", "--config", str(REPO / "configs" / "debug-zero2.yaml"),
              "--probe-dir", str(probe_dir), "--", *overrides]
    if ranks > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
                   "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *worker]
    else:  # one rank needs no launcher; the trainer starts a world of one
        command = [sys.executable, *worker]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    if args.dry_run:
        env["DS_ACCELERATOR"] = "cpu"
    else:
        env.pop("DS_ACCELERATOR", None)  # DeepSpeed picks CUDA; torch.distributed uses NCCL
    row: dict = {"preset": preset, "ranks": ranks, "micro_batch_size": micro_batch_size,
                 "tokens_per_gpu_target": args.tokens_per_gpu, "timeout_s": round(timeout_s)}
    print(f"== {preset} (timeout {timeout_s:.0f} s): {' '.join(command)}", flush=True)
    started = time.perf_counter()
    with open(out / f"{preset}.log", "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            row["returncode"] = process.wait(timeout=timeout_s)
            row["status"] = "ok" if row["returncode"] == 0 else "failed"
        except subprocess.TimeoutExpired:
            stop_run(process, probe_dir)
            row["returncode"], row["status"] = process.returncode, "timeout"
    row["wall_s"] = time.perf_counter() - started
    row.update(planned(preset, overrides, ranks))
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        try:
            window = last_window(metrics)
            row.update({key: window.get(key) for key in (
                "perf/mfu", "perf/tokens_per_s", "perf/model_tflops_per_s_per_rank", "perf/step_time",
                "memory/peak_allocated_gib", "memory/peak_reserved_gib", "train/loss")})
            if row.get("memory/peak_allocated_gib") and row.get("planned_total_gib"):
                row["measured_over_planned"] = row["memory/peak_allocated_gib"] / row["planned_total_gib"]
        except (RuntimeError, ValueError) as error:
            row["metrics_error"] = str(error)
    probe = probe_dir / "rank0.json"
    if probe.exists():
        row["probe"] = json.loads(probe.read_text())
    if row["status"] != "ok":
        row["log_tail"] = (out / f"{preset}.log").read_text()[-2000:]
    if not args.keep_checkpoints:  # ~12 GB per t5-large checkpoint on a 64 GB disk
        subprocess.run(["rm", "-rf", str(run_dir / "checkpoints")], check=False)
    return row


def planned(preset: str, overrides: list[str], ranks: int) -> dict:
    """`seq2vae plan`'s per-rank estimate for the same config on this node (failures recorded, not raised)."""
    try:
        import torch

        from seq2vae.plan import ClusterLayout
        from seq2vae.train.capacity import plan_training_run
        from seq2vae.train.config import load_train_config

        cuda = torch.cuda.is_available()
        layout = ClusterLayout(
            1, ranks, gpu_memory_gib=torch.cuda.get_device_properties(0).total_memory / GIB if cuda else 80.0,
            gpu_name=torch.cuda.get_device_name(0) if cuda else "H100",
        )
        plan = plan_training_run(load_train_config(REPO / "configs" / "debug-zero2.yaml", overrides), layout)
        return {"planned_total_gib": plan.estimate.total_bytes / GIB,
                "planned_model_states_gib": plan.estimate.model_states.device_total / GIB,
                "planned_fits": plan.fits, "flops_per_token": plan.flops_per_token}
    except Exception as error:  # the planner's failure is a finding, not a reason to lose the run
        return {"plan_error": f"{type(error).__name__}: {error}"}


# ------------------------------------------------------------------------------------------- the worker
def worker(args) -> None:
    """One rank (under torchrun, or alone): the real Trainer with bench/step_probe.py around it."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from step_probe import StepProbe

    from seq2vae.train.config import load_train_config
    from seq2vae.train.trainer import Trainer

    probe_dir = Path(args.probe_dir)
    rank = int(os.environ.get("RANK", "0"))
    (probe_dir / f"rank{rank}.pid").write_text(str(os.getpid()))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    config = load_train_config(args.config, args.overrides)
    trainer = Trainer(config)
    probe = StepProbe(trainer, warmup_steps=max(config.logging.every_steps, 2))
    with probe:
        summary = trainer.fit()
    report = probe.report()
    report["status"] = summary["status"]
    (probe_dir / f"rank{rank}.json").write_text(json.dumps(report, indent=2) + "\n")
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------- wheels
def check_wheels(wheels: Path = WHEELS) -> list[str]:
    """Problems with the offline set-up: every requirement of every carried wheel (for CPython 3.12 on
    Linux x86-64) and of the project must be met by another carried wheel or by the GPU image."""
    import zipfile

    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename

    environment = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
                   "sys_platform": "linux", "platform_machine": "x86_64", "extra": ""}
    carried = {}
    problems = []
    for wheel in sorted(wheels.glob("*.whl")):
        name, version, _, tags = parse_wheel_filename(wheel.name)
        if not any(tag.interpreter in ("py3", "cp312", "py2.py3") and ("x86_64" in tag.platform or tag.platform == "any")
                   for tag in tags):
            problems.append(f"{wheel.name}: not installable on CPython 3.12 / Linux x86-64")
        if name in carried:
            problems.append(f"{wheel.name}: a second version of {name} (pip stops on two)")
        carried[name] = (version, wheel)
    image = {canonicalize_name(line.strip()) for line in IMAGE_PACKAGES.read_text().splitlines()
             if line.strip() and not line.startswith("#")}

    def check(requirement: Requirement, needed_by: str) -> None:
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            return
        name = canonicalize_name(requirement.name)
        if name in carried:
            version = carried[name][0]
            if requirement.specifier and version not in requirement.specifier:
                problems.append(f"{needed_by} needs {requirement}; bench/wheels carries {version}")
        elif name not in image:
            problems.append(f"{needed_by} needs {requirement}: neither in bench/wheels nor on the GPU image")

    for _name, (_, wheel) in carried.items():
        with zipfile.ZipFile(wheel) as archive:
            metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
            for line in archive.read(metadata).decode().splitlines():
                if line.startswith("Requires-Dist:"):
                    check(Requirement(line.split(":", 1)[1].strip()), wheel.name)
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for line in project["dependencies"]:
        requirement = Requirement(line)
        if canonicalize_name(requirement.name) in LAZY_DEPENDENCIES:
            continue
        check(requirement, "seq2vae")
    return problems


# Project dependencies the smoke never imports (imported lazily, by input kinds it does not use).
LAZY_DEPENDENCIES = {"datasets"}


# ------------------------------------------------------------------------------------------- report
def write_results(out: Path, header: dict, rows: list[dict]) -> None:
    (out / "results.json").write_text(json.dumps({**header, "runs": rows}, indent=2, default=str) + "\n")
    lines = [
        f"{header['ranks']} x {header['device']} ({header['device_memory_gib']:.0f} GiB), random {header['model']} VAE, "
        f"~{header['tokens_per_gpu']} real tokens per GPU per step, {header['precision']}, torch {header['torch']}, "
        f"DeepSpeed {header['deepspeed']}, transformers {header['transformers']}",
        "",
        "| preset | status | micro batch | tokens/s | MFU | peak alloc GiB | planned GiB | meas/plan | padding "
        "| fwd / bwd / opt / data / host-wait / step (ms) | syncs/step (log step) | final save s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def number(value, spec):
        return format(value, spec) if isinstance(value, (int, float)) else "-"

    for row in rows:
        probe = row.get("probe") or {}
        split = probe.get("split_s_per_step") or {}
        times = " / ".join(number(split.get(key, None) and split[key] * 1e3, ".0f")
                           for key in ("forward", "backward", "optimizer", "data", "host_waits", "step"))
        syncs = f"{number(probe.get('syncs_per_step_max'), 'd')} ({number(probe.get('syncs_per_logging_step_median'), '.0f')})"
        padding = probe.get("padding_share")
        lines.append(
            f"| {row['preset']} | {row.get('status')} | {row.get('micro_batch_size')} "
            f"| {number(row.get('perf/tokens_per_s'), ',.0f')} "
            f"| {number(row.get('perf/mfu'), '.3f')} | {number(row.get('memory/peak_allocated_gib'), '.2f')} "
            f"| {number(row.get('planned_total_gib'), '.2f')} | {number(row.get('measured_over_planned'), '.2f')} "
            f"| {number(padding, '.2f')} | {times} | {syncs} | {number((probe.get('save_s') or [None])[-1], '.1f')} |"
        )
    failed = [row for row in rows if row.get("status") != "ok"]
    lines += [""] + [f"- {row['preset']}: {row.get('status')} (see {row['preset']}.log)" for row in failed]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def environment_header(args, ranks: int) -> dict:
    import deepspeed
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name(0) if cuda else "CPU (dry run)",
        "device_memory_gib": torch.cuda.get_device_properties(0).total_memory / GIB if cuda else 0.0,
        "ranks": ranks, "model": "t5-tiny" if args.dry_run else "flan-t5-large-shaped",
        "tokens_per_gpu": args.tokens_per_gpu, "precision": args.precision, "torch": torch.__version__,
        "cuda": torch.version.cuda, "deepspeed": deepspeed.__version__, "transformers": transformers.__version__,
        "python": sys.version.split()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu-smoke")
    parser.add_argument("--presets", nargs="+", default=DEFAULT_PRESETS, choices=PRESETS)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny model, one rank, a few steps (CI)")
    parser.add_argument("--tokens-per-gpu", type=int, default=None, help="real tokens per GPU per step (12000; dry run 1500)")
    parser.add_argument("--micro-batch-size", type=int, default=None, help="overrides --tokens-per-gpu")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (30; dry run 6)")
    parser.add_argument("--every", type=int, default=None, help="logging window in steps (10; dry run 3)")
    parser.add_argument("--precision", default=None, choices=["bf16", "fp32"], help="bf16; dry run fp32 (CPU bf16 is slow)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="the whole matrix, inputs included")
    parser.add_argument("--run-timeout-s", type=float, default=None, help="one run (180; dry run 120)")
    parser.add_argument("--keep-checkpoints", action="store_true")
    parser.add_argument("--check-wheels", action="store_true", help="check the offline set-up and exit")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--probe-dir", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.check_wheels:
        problems = check_wheels()
        print("\n".join(problems) or f"bench/wheels: {len(list(WHEELS.glob('*.whl')))} wheels; every requirement is met")
        raise SystemExit(1 if problems else 0)
    started = time.perf_counter()
    defaults = (1500, 6, 3, 120.0, "fp32") if args.dry_run else (12000, 30, 10, 180.0, "bf16")
    for key, value in zip(("tokens_per_gpu", "steps", "every", "run_timeout_s", "precision"), defaults):
        if getattr(args, key) is None:
            setattr(args, key, value)

    import torch

    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu_smoke: no CUDA device visible; use --dry-run on CPU")
    ranks = 1 if args.dry_run else torch.cuda.device_count()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    header = environment_header(args, ranks)
    rows: list[dict] = []
    write_results(out, header, rows)
    inputs = prepare(out, args.dry_run)
    header["mean_sentence_tokens"] = inputs["mean_sentence_tokens"]
    header["prepare_s"] = time.perf_counter() - started
    print(f"inputs ready in {header['prepare_s']:.0f} s: {inputs}", flush=True)
    for preset in args.presets:
        left = args.budget_s - (time.perf_counter() - started)
        if left < 30:
            rows.append({"preset": preset, "status": "skipped (budget)", "ranks": ranks})
        else:
            rows.append(run_preset(preset, args, inputs, out, ranks, min(args.run_timeout_s, left)))
        write_results(out, header, rows)
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "log_tail"}, default=str), flush=True)
    print((out / "results.md").read_text())
    if any(row.get("status") != "ok" for row in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
