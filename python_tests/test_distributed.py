"""Data-parallel message passing on torch.distributed (Gloo, 2 CPU processes): the fields,
magnetisations and errors (and those of the posterior average) of the 2-process run equal the
single-process run on the same global batches (float64 to 1e-12 relative, float32 within its
rounding budget), for MF, AMP and BPI, dense and conv layers, argmax and sign outputs; a rank
whose data differs is caught."""

from __future__ import annotations

import os

import pytest
import torch

from bpkernels.runlog import load_checkpoint, save_checkpoint
import torch.distributed as dist
import torch.multiprocessing as mp

from bpkernels import build_arch, data, fit, mlp
from bpkernels.distributed import DataParallel

from helpers import assert_close

F32, F64 = torch.float32, torch.float64

# name: (algo, network, tau_max, dtype)
CASES = {
    "mf-dense-argmax-f64": ("mf", "dense", 1, F64),
    "amp-dense-argmax-f64": ("amp", "dense", 2, F64),
    "bpi-dense-argmax-f64": ("bpi", "dense", 1, F64),
    "mf-dense-sign-f64": ("mf", "sign", 2, F64),
    "amp-dense-sign-f64": ("amp", "sign", 1, F64),
    "bpi-dense-sign-f64": ("bpi", "sign", 2, F64),
    "mf-conv-f64": ("mf", "conv", 1, F64),
    "amp-conv-f64": ("amp", "conv", 2, F64),
    "bpi-conv-f64": ("bpi", "conv", 1, F64),
    "amp-dense-argmax-f32": ("amp", "dense", 1, F32),
    "bpi-conv-f32": ("bpi", "conv", 1, F32),
}
BATCH, EPOCHS = 30, 2  # 2 shards of 15; the uneven case uses 29 (15 + 14)


def build(case: str, batch: int):
    algo, net, tau_max, dtype = CASES[case]
    if net == "sign":
        ds = data.teacher_student(93, 40, (16, 9, 1), seed=1)
        model = mlp([16, 9, 1], algo=algo, output="sign", seed=2, dtype=dtype)
    elif net == "dense":
        ds = data.teacher_student(93, 40, (16, 9, 3), seed=1)
        model = mlp([16, 9, 3], algo=algo, seed=2, dtype=dtype)
    else:
        ds = data.teacher_student(93, 40, (49, 3), seed=1)
        model = build_arch("conv3k3s2p1-conv4k3s1p1-dense3", algo=algo, num_classes=3,
                           input_shape=(1, 7, 7), seed=2, dtype=dtype)
    # the posterior average of the last epoch joins every row (avg_* errors on shards)
    return model, ds, dict(epochs=EPOCHS, batch_size=batch, tau_max=tau_max, seed=4,
                           progress=False, average_from=EPOCHS)


def worker(rank: int, world: int, init_file: str, out_dir: str, batch: int, planted: bool):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        results = {}
        for case in CASES:
            model, ds, kwargs = build(case, batch)
            if planted and rank == 1:
                ds.train_x[1::2] *= -1  # a planted bug: this rank sees other data
            rows = fit(model, ds, **kwargs)
            results[case] = (model.state_dict(), rows)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_two_processes(tmp_path, batch: int, planted: bool = False) -> dict:
    mp.spawn(worker, args=(2, str(tmp_path / "init"), str(tmp_path), batch, planted), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return ranks


def compare(case: str, single, parallel) -> None:
    (ref_state, ref_rows), (state, rows) = single, parallel
    dtype = CASES[case][3]
    # float64: only the summation order of H_in differs. float32: the same, amplified by a
    # few message-passing steps; the bound is still ~1e4 below any real disagreement.
    close = dict(rtol=1e-12, atol=1e-12) if dtype == F64 else dict(rtol=2e-4, atol=2e-5)
    for name, ref in ref_state.items():
        assert_close(state[name], ref, **close, name=f"{case}: {name}")
    if dtype == F64:
        timing = ("seconds", "cpu_seconds", "world_size")
        strip = [{k: v for k, v in r.items() if k not in timing} for r in rows]
        ref_strip = [{k: v for k, v in r.items() if k not in timing} for r in ref_rows]
        for a, b in zip(strip, ref_strip):
            assert a.keys() == b.keys()
            assert all(abs(a[k] - b[k]) <= 1e-12 * max(1.0, abs(b[k])) if isinstance(b[k], float)
                       else a[k] == b[k] for k in a), (case, a, b)


@pytest.mark.slow
@pytest.mark.parametrize("batch", [30, 29], ids=["even-shards", "uneven-shards"])
def test_two_gloo_processes_equal_one_process(tmp_path, batch):
    singles = {}
    for case in CASES:
        model, ds, kwargs = build(case, batch)
        rows = fit(model, ds, **kwargs)
        singles[case] = (model.state_dict(), rows)
    ranks = run_two_processes(tmp_path, batch)
    for case in CASES:
        for rank in ranks:
            compare(case, singles[case], rank[case])
        for name, t in ranks[0][case][0].items():
            assert torch.equal(t, ranks[1][case][0][name]), "ranks must hold identical fields"


@pytest.mark.slow
def test_a_rank_with_other_data_is_caught(tmp_path):
    model, ds, kwargs = build("bpi-dense-argmax-f64", BATCH)
    fit(model, ds, **kwargs)
    ranks = run_two_processes(tmp_path, BATCH, planted=True)
    with pytest.raises(AssertionError):
        compare("bpi-dense-argmax-f64", (model.state_dict(), None), ranks[0]["bpi-dense-argmax-f64"])


def test_shards_and_bucketed_all_reduce_without_a_process_group():
    dp = DataParallel(rank=1, world_size=3, backend="gloo")
    assert dp.shard(torch.arange(8)).tolist() == [3, 4, 5]
    assert DataParallel(2, 3, "gloo").shard(torch.arange(8)).tolist() == [6, 7]
    assert DataParallel.current() is None


def test_resume_refuses_another_world_size(tmp_path):
    model, ds, kwargs = build("mf-dense-argmax-f64", BATCH)
    run = str(tmp_path / "run")
    fit(model, ds, **{**kwargs, "epochs": 1}, run_dir=run)
    state = load_checkpoint(os.path.join(run, "checkpoint.pt"))
    state["config"]["world_size"] = 2
    save_checkpoint(state, os.path.join(run, "checkpoint.pt"))
    with pytest.raises(ValueError, match="trained with 2 data-parallel process"):
        fit(model, ds, **kwargs, run_dir=run, resume=True)


@pytest.mark.slow
def test_torchrun_command_line_trains_message_passing_and_ddp_baselines(tmp_path):
    """`torchrun --nproc_per_node 2 -m bpkernels compare ...`: message passing with the
    all-reduced field messages and STE under DistributedDataParallel; rank 0 writes the run
    folders, whose configs record the world size and the backend."""
    import json
    import subprocess
    import sys

    out = tmp_path / "cmp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29531", "-m", "bpkernels", "compare", "--dataset", "teacher",
           "--subset", "240", "--test-subset", "60", "--hidden", "11", "--epochs", "2",
           "--batch-size", "40", "--no-progress", "--methods", "bpi,ste", "--threads", "1",
           "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    for method in ("bpi", "ste"):
        config = json.loads((out / method / "config.json").read_text())
        assert (config["world_size"], config["backend"]) == (2, "gloo")
        assert len((out / method / "metrics.jsonl").read_text().splitlines()) == 2
    assert (out / "compare.md").read_text().count("| ste |") == 2
