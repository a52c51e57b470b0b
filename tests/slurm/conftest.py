"""A real one-node SLURM for the tests: munged, slurmctld and slurmd started in a temporary directory.

Everything the daemons write (munge key and socket, state, spool, logs, slurm.conf) lives in that
directory, on free ports, so a SLURM or munge already running on the machine is never touched. The
daemons run in the foreground as children of the test process and are stopped at the end of the
session by the process ids recorded here, after every job of this cluster has been cancelled.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from seq2vae.distributed import free_port

TESTS_DIR = Path(__file__).resolve().parent
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "scontrol", "scancel", "squeue", "sinfo", "srun")


def _node_line(node_name: str) -> str:
    """The node's real topology from `slurmd -C`, with RealMemory capped below the real memory."""
    reported = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    fields = dict(item.split("=", 1) for item in reported.split())
    real_mb = int(fields["RealMemory"])
    # Leave half the memory to everything else on the machine; slurmd drains a node that reports
    # less memory than configured, so never configure more than it has.
    fields["RealMemory"] = str(min(8000, real_mb // 2))
    fields["NodeName"] = node_name
    return " ".join(f"{key}={value}" for key, value in fields.items()) + " NodeAddr=127.0.0.1 State=UNKNOWN"


@dataclass
class LocalSlurm:
    """A running one-node cluster; `env` points SLURM's client commands at it."""

    root: Path
    env: dict[str, str]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def run(self, *command: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        result = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr}\n{self.logs()}")
        return result

    def job_fields(self, job_id: str) -> list[dict[str, str]]:
        """`scontrol show job -o` as dicts, one per job (one per task for an array id)."""
        result = self.run("scontrol", "show", "job", "-o", job_id, check=False)
        jobs = []
        for line in result.stdout.splitlines():
            jobs.append(dict(re.findall(r"(\w+)=(\S*)", line)))
        return jobs

    def wait_for(self, job_id: str, predicate, what: str, timeout: float = 180) -> list[dict[str, str]]:
        """Polls `scontrol show job` until `predicate(jobs)` holds; fails with the job and daemon logs."""
        deadline = time.monotonic() + timeout
        jobs: list[dict[str, str]] = []
        while time.monotonic() < deadline:
            jobs = self.job_fields(job_id)
            if jobs and predicate(jobs):
                return jobs
            time.sleep(0.5)
        raise AssertionError(f"job {job_id}: timed out after {timeout:.0f}s waiting for {what}; last seen {jobs}\n{self.logs()}")

    def wait_until_done(self, job_id: str, timeout: float = 240) -> list[dict[str, str]]:
        done = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED")
        return self.wait_for(job_id, lambda jobs: all(j["JobState"] in done for j in jobs), "the end", timeout)

    def explain(self, job_id: str) -> str:
        """The job's record and the daemons' logs, for assertion messages."""
        record = self.run("scontrol", "show", "job", job_id, check=False).stdout
        return f"--- scontrol show job {job_id} ---\n{record}\n{self.logs()}"

    def seq2vae_slurm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Runs `python -m seq2vae slurm ARGS` against this cluster, the way a user would."""
        result = subprocess.run(
            [sys.executable, "-m", "seq2vae", "slurm", *args], env=self.env, capture_output=True, text=True, timeout=180
        )
        if check and result.returncode != 0:
            raise AssertionError(f"seq2vae slurm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def wait_until(self, condition, what: str, timeout: float = 120) -> None:
        """Polls `condition()` (e.g. a file written by a running job); fails with the daemon logs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.3)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{self.logs()}")

    def logs(self) -> str:
        parts = []
        for name in ("slurmctld.log", "slurmd.log", "slurmctld.out", "slurmd.out"):
            path = self.root / name
            if path.exists():
                parts.append(f"--- tail of {path} ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-25:]))
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancels this cluster's jobs, then stops the daemons it started, by their recorded pids."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            self.run("scancel", "--full", "--signal=KILL", "--user", "root", check=False)
            self.run("scancel", "--user", "root", check=False)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.run("squeue", "--noheader", check=False).stdout.strip():
                time.sleep(0.5)
        for name in reversed(DAEMONS):
            process = self.processes.get(name)
            if process is None or process.poll() is not None:
                continue
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def _start_cluster(root: Path) -> LocalSlurm:
    node_name = socket.gethostname().split(".")[0]
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    munge_socket = root / "munge.socket"
    for directory in ("state", "spool"):
        (root / directory).mkdir()
    conf = root / "slurm.conf"
    conf.write_text(
        "\n".join(
            [
                "ClusterName=seq2vaetest",
                f"SlurmctldHost={node_name}(127.0.0.1)",
                f"SlurmctldPort={free_port()}",
                f"SlurmdPort={free_port()}",
                "SlurmUser=root",
                "SlurmdUser=root",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                # cred_expire is also how long a requeued job is held before it may run again (default
                # 120 s); slurmd refuses to relaunch a job it killed less than that ago, so tests must not
                # shortcut the hold with `scontrol update StartTime=now`.
                f"AuthInfo=socket={munge_socket},cred_expire=5",
                f"StateSaveLocation={root / 'state'}",
                f"SlurmdSpoolDir={root / 'spool'}",
                f"SlurmctldPidFile={root / 'slurmctld.pid'}",
                f"SlurmdPidFile={root / 'slurmd.pid'}",
                f"SlurmctldLogFile={root / 'slurmctld.log'}",
                f"SlurmdLogFile={root / 'slurmd.log'}",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core",
                "MpiDefault=none",
                "SwitchType=switch/none",
                "JobCompType=jobcomp/none",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/none",
                "SchedulerType=sched/backfill",
                "MailProg=/bin/true",
                "ReturnToService=2",
                # Keep finished jobs visible to `scontrol show job` for the whole session.
                "MinJobAge=3600",
                # SLURM's default: the ranks' window between TERM at the time limit and SIGKILL.
                "KillWait=30",
                _node_line(node_name),
                f"PartitionName=debug Nodes={node_name} Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )
    )
    env = dict(os.environ, SLURM_CONF=str(conf))
    cluster = LocalSlurm(root=root, env=env)
    commands = {
        # --force: munged otherwise insists that every parent directory of its socket is world-searchable.
        "munged": ["munged", "--foreground", "--force", f"--key-file={key}", f"--socket={munge_socket}",
                   f"--pid-file={root / 'munged.pid'}", f"--log-file={root / 'munged.log'}",
                   f"--seed-file={root / 'munged.seed'}"],
        "slurmctld": ["slurmctld", "-D", "-i"],
        "slurmd": ["slurmd", "-D"],
    }
    try:
        for name in DAEMONS:
            with open(root / f"{name}.out", "w") as output:
                cluster.processes[name] = subprocess.Popen(
                    commands[name], env=env, stdout=output, stderr=subprocess.STDOUT, cwd=root
                )
            if name == "munged":
                _wait(lambda: munge_socket.exists(), 15, "munged to create its socket", root)
        _wait(lambda: _node_idle(cluster), 60, "the node to become idle", root)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _node_idle(cluster: LocalSlurm) -> bool:
    for name, process in cluster.processes.items():
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}: {(cluster.root / f'{name}.out').read_text()}")
    result = cluster.run("sinfo", "--noheader", "--format=%T", check=False)
    return result.returncode == 0 and result.stdout.strip() == "idle"


def _wait(condition, timeout: float, what: str, root: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    outputs = "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')[-2000:]}" for p in sorted(root.glob("*.out")))
    raise RuntimeError(f"local SLURM: timed out waiting for {what}\n{outputs}")


@pytest.fixture(scope="session")
def slurm_cluster():
    """A one-node SLURM for this test session (skipped, with the reason, when it cannot run here)."""
    missing = [name for name in DAEMONS + CLIENTS + ("torchrun",) if shutil.which(name) is None]
    if missing:
        pytest.skip(f"SLURM tests need {', '.join(missing)} (apt-get install slurmctld slurmd slurm-client munge)")
    if os.geteuid() != 0:
        pytest.skip("SLURM tests start slurmd, which must run as root")
    # A short path under /tmp: munge's socket path must fit in a unix socket address (108 bytes).
    root = Path(tempfile.mkdtemp(prefix="seq2vae-slurm-"))
    cluster = _start_cluster(root)
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def stand_in_setup() -> list[str]:
    """`--setup` lines that make the stand-in trainer importable inside jobs."""
    return [f"export PYTHONPATH={TESTS_DIR}${{PYTHONPATH:+:$PYTHONPATH}}"]


@pytest.fixture(scope="session")
def training_shards(tokenizer_dir, tmp_path_factory) -> Path:
    """Shards of a small synthetic corpus written by `seq2vae shard` with the session tokenizer."""
    from seq2vae.data.cli import main as shard_main
    from seq2vae.data.synthetic import write_jsonl

    if importlib.util.find_spec("seq2vae.train.__main__") is None:
        pytest.skip("`python -m seq2vae.train` is not available yet")
    directory = tmp_path_factory.mktemp("slurm-data")
    corpus = write_jsonl(directory / "corpus.jsonl", 400, seed=0)
    code = shard_main([str(corpus), "--output", str(directory / "shards"), "--tokenizer", str(tokenizer_dir),
                       "--valid-fraction", "0.1", "--max-length", "64", "--shard-size", "100", "--quiet"])
    assert code == 0
    return directory / "shards"


@pytest.fixture(scope="session")
def write_train_config(training_shards, tokenizer_dir):
    """write_train_config(directory, steps, checkpoint_every) -> a tiny debug-t5 ZeRO-2 CPU training config."""

    def write(directory: Path, steps: int, checkpoint_every: int) -> Path:
        config = {
            "run_dir": str(directory / "run"),
            "model": {"backbone": "debug-t5", "tokenizer": str(tokenizer_dir), "latent_dim": 16},
            # 4 per rank x 2 ranks = 8: no accumulation.
            "data": {"train": str(training_shards), "micro_batch_size": 4, "global_batch_size": 8},
            "phases": [{"name": "vae", "steps": steps}],
            "deepspeed": "zero2",
            "precision": "fp32",
            "checkpoint": {"every_steps": checkpoint_every},
            "logging": {"every_steps": 1, "progress_bar": False},
            "validation": {"every_steps": 0, "max_batches": 1, "num_reconstructions": 0},
        }
        path = directory / "train.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return write
