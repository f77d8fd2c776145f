"""Distributed training: launcher environments, and real multi-process runs on gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import CONFIGS, REPO, free_port, run_in_process, run_ranks
from mnist_files import write_fake_mnist

from mnist_ddp.base.errors import InputError
from mnist_ddp.base.fault_injection import FAULT_ENV, PRINT_HASH_ENV, SAMPLE_LOG_ENV
from mnist_ddp.data.order import epoch_permutation, shard_indices
from mnist_ddp.model.evaluation import evaluate_across_ranks
from mnist_ddp.model.mlp import MLP
from mnist_ddp.parallel import distributed, launcher

SMOKE = str(CONFIGS / "smoke.yaml")
OUTPUTS = ["checkpoints", "config.yaml", "metrics.jsonl", "model.pt", "plots", "profile", "summary.json"]


def test_torchrun_environment():
    env = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "n1", "MASTER_PORT": "1234"}
    assert launcher.read_launch(env) == launcher.Launch(3, 1, 4, "torchrun", "n1", 1234)
    assert launcher.read_launch({**env, "LOCAL_WORLD_SIZE": "2"}).local_world_size == 2


def test_bare_srun_environment():
    env = {
        "SLURM_PROCID": "5",
        "SLURM_LOCALID": "1",
        "SLURM_NTASKS": "8",
        "SLURM_JOB_ID": "123456",
        "SLURM_JOB_NODELIST": "gpu[07-10],cpu1",
    }
    launch = launcher.read_launch(env)
    assert launch == launcher.Launch(5, 1, 8, "slurm", "gpu07", 20000 + 123456 % 20000)
    # torchrun inside an allocation wins over SLURM's variables.
    assert launcher.read_launch({**env, "RANK": "0", "WORLD_SIZE": "2"}).launcher == "torchrun"


def test_no_launcher_and_single_task_slurm_are_world_size_1():
    assert launcher.read_launch({}) == launcher.Launch()
    assert launcher.read_launch({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}).world_size == 1


@pytest.mark.parametrize(
    "nodelist, host",
    [("node1", "node1"), ("gpu[03-05,9]", "gpu03"), ("a[1,2],b3", "a1"), ("n[001-004]-ib", "n001-ib"), ("x,y", "x")],
)
def test_first_host(nodelist, host):
    assert launcher.first_host(nodelist) == host


@pytest.mark.parametrize(
    "configured, env, expected",
    [
        (3, {"OMP_NUM_THREADS": "1"}, 3),  # train.threads wins over everything
        (0, {"OMP_NUM_THREADS": "1"}, 8),  # torchrun's (or the user's) OMP_NUM_THREADS: torch's default
        (0, {"SLURM_CPUS_PER_TASK": "8", "LOCAL_WORLD_SIZE": "4"}, 2),  # one task per node, 4 ranks in it
        (0, {"SLURM_CPUS_PER_TASK": "1", "LOCAL_WORLD_SIZE": "1"}, 1),  # sbatch --nodes=2 --cpus-per-task=1
        (0, {"SLURM_CPUS_PER_TASK": "3", "LOCAL_WORLD_SIZE": "4"}, 1),  # never below one
        (0, {"SLURM_CPUS_PER_TASK": "64"}, 8),  # never above torch's default
    ],
)
def test_threads_follow_the_cpus_the_launcher_gives_each_rank(configured, env, expected):
    assert launcher.threads_per_rank(configured, 8, env) == expected


def test_without_slurm_the_cpus_this_process_may_use_are_shared_by_the_local_ranks():
    import os

    cpus = len(os.sched_getaffinity(0))
    assert launcher.threads_per_rank(0, 64, {"LOCAL_WORLD_SIZE": "1"}) == cpus
    assert launcher.threads_per_rank(0, 64, {"LOCAL_WORLD_SIZE": str(cpus * 2)}) == 1


@pytest.mark.parametrize(
    "launch, visible, share, index",
    [
        (launcher.Launch(local_rank=0), 4, False, 0),
        (launcher.Launch(3, 3, 4, "torchrun", local_world_size=4), 4, False, 3),  # torchrun: rank i, GPU i
        (launcher.Launch(5, 1, 8, "slurm"), 1, False, 0),  # bare srun --gpus-per-task=1: its one GPU
        (launcher.Launch(5, 1, 8, "slurm"), 4, False, 1),  # bare srun, every GPU visible to every task
        (launcher.Launch(1, 1, 2, "torchrun", local_world_size=2), 1, True, 0),  # gloo ranks share a GPU
    ],
)
def test_each_rank_takes_the_gpu_its_launcher_means(launch, visible, share, index):
    assert launcher.cuda_index(launch, visible, share) == index


def test_more_torchrun_ranks_than_gpus_is_an_error():
    launch = launcher.Launch(1, 1, 2, "torchrun", local_world_size=2)
    with pytest.raises(InputError, match=r"local rank 1 has no GPU \(1 visible to it\); start at most 1 ranks"):
        launcher.cuda_index(launch, 1)


def test_backend_follows_the_device():
    assert launcher.choose_backend("auto", torch.device("cpu")) == "gloo"
    assert launcher.choose_backend("auto", torch.device("cuda", 0)) == "nccl"
    with pytest.raises(InputError, match=r"dist\.backend=nccl needs CUDA ranks"):
        launcher.choose_backend("nccl", torch.device("cpu"))


def test_epoch_shards_are_disjoint_cover_and_reshuffle():
    n, world = 1000, 4
    for epoch in (1, 2):
        order = epoch_permutation(n, seed=7, epoch=epoch)
        shards = [shard_indices(order, r, world, 64) for r in range(world)]
        joined = torch.cat(shards)
        assert len(joined) == n and len(set(joined.tolist())) == n
    assert not torch.equal(epoch_permutation(n, 7, 1), epoch_permutation(n, 7, 2))
    assert torch.equal(epoch_permutation(n, 7, 1), epoch_permutation(n, 7, 1))


def score_on_ranks(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    model = MLP(64, [32], dropout=0.5)  # the same weights on every rank and for every world size
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (101, 64), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (101,), generator=generator)
    counts = evaluate_across_ranks(model, images, labels, 16, rank, world_size)
    if rank == 0:
        fields = ("examples", "correct", "per_class_total", "loss_sum", "confusion")
        Path(out).write_text(json.dumps({f: getattr(counts, f) for f in fields}))
    dist.destroy_process_group()


def test_evaluation_counts_every_test_image_once_for_any_world_size(tmp_path):
    torch.manual_seed(0)
    model = MLP(64, [32], dropout=0.5)  # as score_on_ranks builds it
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (101, 64), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (101,), generator=generator)
    one = evaluate_across_ranks(model, images, labels, 16, 0, 1)  # one process: no group
    fields = ("examples", "correct", "per_class_total", "loss_sum", "confusion")
    results = [{f: getattr(one, f) for f in fields}]
    for world_size in (2, 3):  # 101 images: divisible by neither 2 nor 3
        out = tmp_path / f"w{world_size}.json"
        mp.spawn(score_on_ranks, args=(world_size, free_port(), str(out)), nprocs=world_size)
        results.append(json.loads(out.read_text()))
    assert [r["examples"] for r in results] == [101, 101, 101]
    assert results[0]["correct"] == results[1]["correct"] == results[2]["correct"]
    assert results[0]["confusion"] == results[1]["confusion"] == results[2]["confusion"]
    assert results[0]["per_class_total"] == results[2]["per_class_total"]
    assert results[0]["loss_sum"] == pytest.approx(results[2]["loss_sum"], rel=1e-6)  # float32 sums in another order


def run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def torchrun(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]


def hashes(output: str) -> dict[str, str]:
    rows = [line.split() for line in output.splitlines() if line.startswith("parameter_hash ")]
    return {rank: digest for _, rank, digest in rows}


def test_two_ranks_through_launch_script_train_one_model_name_the_slow_rank_and_profile(tmp_path):
    run_dir = tmp_path / "run"
    result = run(
        [
            str(REPO / "launch" / "local.sh"),
            "--config",
            SMOKE,
            "train.epochs=3",
            f"run.dir={run_dir}",
            "profile.steps=8",
            "profile.skip_steps=17",  # steps 19-26: the end of epoch 1 (23 steps) falls inside
            "profile.top=5",
        ],
        cwd=tmp_path,
        env={"NPROC": "2", PRINT_HASH_ENV: "1", FAULT_ENV: "slow:1:0:0.03"},  # rank 1 sleeps 30 ms a step
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = hashes(result.stdout)
    assert set(found) == {"rank=0", "rank=1"} and len(set(found.values())) == 1
    # Rank 0 alone prints epoch lines and writes; the other rank leaves nothing behind but its trace.
    epochs = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert sorted(p.name for p in run_dir.iterdir()) == OUTPUTS
    # One snapshot per epoch end (23 steps each), the newest three kept, written by rank 0 alone.
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "latest",
        "step_0000023.pt",
        "step_0000046.pt",
        "step_0000069.pt",
    ]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["world_size"], summary["backend"], summary["per_rank_batch_size"]) == (2, "gloo", 32)
    assert summary["test_examples"] == 360
    assert summary["test_accuracy"] > 0.8
    # The slow rank is named: it computes longest, while the fast one waits for its gradients.
    host = summary["hosts"][1]
    assert all(f"straggler: rank 1 ({host}) computes " in line for line in epochs[1:]), epochs
    assert summary["straggler"]["rank"] == 1 and summary["straggler"]["factor"] >= 1.5
    times = summary["rank_seconds"]
    assert times["compute"][1] > times["compute"][0] and times["gradient_wait"][0] > times["gradient_wait"][1]
    assert (run_dir / "plots" / "rank_times.png").stat().st_size > 0
    # One trace per rank, with the phases as ranges and gloo's all-reduce; rank 0 prints the top operations.
    for rank in (0, 1):
        events = json.loads((run_dir / "profile" / f"rank{rank}.pt.trace.json").read_text())["traceEvents"]
        names = {e.get("name") for e in events}
        assert {"mnist_ddp/step", "mnist_ddp/agreement", "mnist_ddp/evaluation", "mnist_ddp/snapshot"} <= names
        assert "gloo:all_reduce" in names
    assert "profile: one trace per rank in " in result.stdout and "Self CPU time total" in result.stdout


def test_any_world_size_trains_the_default_recipe_as_one_process_does(tmp_path):
    # The default recipe (AdamW, label smoothing, dropout) on digits' 1,437 images for an epoch
    # in fp32, shifted. Batches of 512 split 171/171/170 at 3 ranks and 103/103/102/102/102 at 5;
    # batches of 478 leave a last step of 3 images, none for ranks 3 and 4 of 5, and with
    # accumulate_steps=2 micro-batches of 80 and 79 (small buckets move gradients, not sums).
    # Each rank's loss is weighted by its images, so every world size trains the same steps: the
    # weights differ by the order of the sums alone, measured here as 1 process against 2 ranks.
    args = ["data.dataset=digits", "train.epochs=1", "train.bf16=false", "train.augment_shift=1", "log.plots=false"]
    runs = {
        "1": (1, ["train.batch_size=512"]),
        "2": (2, ["train.batch_size=512"]),
        "3": (3, ["train.batch_size=512"]),
        "5": (5, ["train.batch_size=512"]),
        "1 short": (1, ["train.batch_size=478"]),
        "3 short, micro-batches": (3, ["train.batch_size=478", "train.accumulate_steps=2", "dist.bucket_cap_mb=0.01"]),
        "5 short": (5, ["train.batch_size=478"]),
        "3 bf16 hook": (3, ["train.batch_size=512", "dist.comm_hook=bf16"]),
    }
    weights, accuracy, train_loss = {}, {}, {}
    for name, (ranks, options) in runs.items():
        run = tmp_path / name.replace(" ", "_").replace(",", "")
        if ranks == 1:
            result = run_in_process("mnist_ddp.train", *args, *options, f"run.dir={run}", cwd=tmp_path)
            assert result.returncode == 0, result.stderr[-3000:]
        else:
            done = run_ranks([[*args, *options, f"run.dir={run}"]] * ranks, tmp_path)
            assert [r.returncode for r in done] == [0] * ranks, done[0].stderr[-3000:]
        weights[name] = torch.load(run / "model.pt", weights_only=True)["state_dict"]
        accuracy[name] = json.loads((run / "summary.json").read_text())["test_accuracy"]
        train_loss[name] = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["train_loss"]

    def difference(a: str, b: str) -> float:
        return max((weights[a][k] - weights[b][k]).abs().max().item() for k in weights[a])

    reduction_order = difference("1", "2")
    assert 0 < reduction_order <= 1e-4, reduction_order
    # AdamW's first steps divide each gradient by its own size, which blows rounding up by a
    # factor that depends on the run (seen: 1 to 12 times the 1-vs-2 difference). Shares left
    # unweighted (a plain average over ranks) differ by 0.02.
    for name, reference in (("3", "1"), ("5", "1"), ("3 short, micro-batches", "1 short"), ("5 short", "1 short")):
        assert difference(reference, name) <= 50 * reduction_order, (name, difference(reference, name))
        assert accuracy[name] == accuracy[reference], name
        # The epoch's training loss is the mean over the global batches, whatever the ranks.
        assert train_loss[name] == pytest.approx(train_loss[reference], rel=1e-6), name
    # A bf16 hook rounds the gradients on the wire: close, not equal.
    assert reduction_order < difference("1", "3 bf16 hook") <= 0.05
    assert abs(accuracy["3 bf16 hook"] - accuracy["1"]) <= 0.03


def test_a_run_stopped_at_two_ranks_resumes_at_three_on_every_image_once(tmp_path):
    # Stopped (SIGTERM to rank 0, a preemption) in epoch 2 at 2 ranks, resumed at 3: batches of
    # 128 split 64/64, then 43/43/42; each epoch's last step of 29 images 15/14, then 10/10/9.
    # The sample log shows every image of every epoch trained once, and the run ends at the
    # accuracy of one uninterrupted process.
    args = ["data.dataset=digits", "train.epochs=2", "train.batch_size=128", "train.bf16=false", "log.plots=false"]
    args.append("checkpoint.check_every_steps=1")  # the ranks agree on the stop at the next step
    samples = tmp_path / "samples"
    samples.mkdir()
    whole = run_in_process("mnist_ddp.train", *args, f"run.dir={tmp_path / 'whole'}", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]
    run = [*args, f"run.dir={tmp_path / 'run'}"]
    log = {SAMPLE_LOG_ENV: str(samples)}
    stopped = run_ranks([run] * 2, tmp_path, env={**log, FAULT_ENV: "signal:0:15:SIGTERM"})
    assert [r.returncode for r in stopped] == [75, 75], stopped[0].stderr[-3000:]
    resumed = run_ranks([run] * 3, tmp_path, env=log)
    assert [r.returncode for r in resumed] == [0, 0, 0], resumed[0].stderr[-3000:]
    assert "snapshot saved with 2 ranks, resuming with 3" in resumed[0].stdout

    by_step: dict[int, list[tuple[int, list[int]]]] = {}
    for path in samples.glob("*.txt"):
        for line in path.read_text().splitlines():
            _, step, world_size, _, images = line.split()
            taken = [] if images == "-" else [int(i) for i in images.split(",")]
            by_step.setdefault(int(step), []).append((int(world_size), taken))
    assert sorted(by_step) == list(range(1, 25))  # 12 steps an epoch, each trained once
    last_at_two = max(step for step, group in by_step.items() if group[0][0] == 2)
    assert 12 < last_at_two < 24 and last_at_two % 12  # stopped mid-epoch 2
    assert all(len(by_step[s]) == (2 if s <= last_at_two else 3) for s in by_step)
    for epoch in (1, 2):
        taken = [image for s in range(12 * epoch - 11, 12 * epoch + 1) for _, images in by_step[s] for image in images]
        assert sorted(taken) == list(range(1437)), epoch
    ends = [json.loads((tmp_path / name / "summary.json").read_text())["test_accuracy"] for name in ("whole", "run")]
    assert abs(ends[0] - ends[1]) <= 0.001, ends


def test_three_ranks_score_an_indivisible_test_set_exactly(tmp_path):
    write_fake_mnist(tmp_path / "mnist", n_train=300, n_test=101)
    args = [f"data.root={tmp_path / 'mnist'}", "train.batch_size=63", "train.epochs=1", f"run.dir={tmp_path / 'run'}"]
    ranks = run_ranks([args] * 3, tmp_path)
    assert [r.returncode for r in ranks] == [0, 0, 0], ranks[0].stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test_examples"] == 101 and summary["world_size"] == 3 and summary["per_rank_batch_size"] == 21


def test_a_store_another_job_claimed_is_refused():
    port = free_port()
    store = dist.TCPStore("127.0.0.1", port, 1, is_master=True, wait_for_workers=False)
    distributed.claim_store(store, "here")  # no job id: claimed as "-"
    with pytest.raises(InputError, match=r"^the store at here belongs to job -, not to this job \(j2\): two jobs"):
        os.environ["TORCHELASTIC_RUN_ID"] = "j2"
        try:
            distributed.claim_store(store, "here")
        finally:
            del os.environ["TORCHELASTIC_RUN_ID"]


def test_a_failing_rank_stops_the_whole_job_instead_of_hanging(tmp_path):
    started = time.monotonic()
    result = run(
        torchrun(2, "-m", "mnist_ddp.train", "--config", SMOKE, "dist.timeout_seconds=60", f"run.dir={tmp_path / 'r'}"),
        cwd=tmp_path,
        env={FAULT_ENV: "raise:1:5"},
        timeout=120,
    )
    assert result.returncode != 0
    assert time.monotonic() - started < 60
    assert "test fault: rank fails at step 5" in result.stdout + result.stderr
    assert not (tmp_path / "r" / "summary.json").exists()


def test_more_ranks_than_training_images_is_a_clear_error(tmp_path):
    write_fake_mnist(tmp_path / "mnist", n_train=1, n_test=4)
    ranks = run_ranks([[f"data.root={tmp_path / 'mnist'}", "train.batch_size=2"]] * 2, tmp_path)
    assert [r.returncode for r in ranks] == [2, 2]
    errors = [line for r in ranks for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: [rank 0] 1 training images cannot be shared by 2 ranks; start fewer processes or use a larger dataset"
    ]
    assert not (tmp_path / "runs").exists()


def test_the_attempt_keys_the_store_only_where_the_agent_hosts_it(monkeypatch):
    # The agent's store outlives a restart's workers; a store rank 0 hosts is new each round, where
    # an elastic job's nodes have restarted different numbers of times (a node that joins later fewer).
    store = dist.HashStore()
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "j")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    distributed.job_store(store).set("k", "agent")
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")
    distributed.job_store(store).set("k", "rank 0")
    assert store.get("mnist_ddp/j/attempt_2/k") == b"agent" and store.get("mnist_ddp/j/attempt_0/k") == b"rank 0"
