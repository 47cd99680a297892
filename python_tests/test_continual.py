"""Continual learning: permuted tasks, the posterior of one task as the prior of the next, the
accuracy matrix, resumption at any epoch of any task, the baselines' task hooks
(metaplasticity, BayesBiNN's prior), and the command end to end."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch

from bpkernels import BPSequential, cli, continual, data, mlp
from bpkernels.baselines import make_trainer
from bpkernels.gaussian import GaussianBPLinear
from bpkernels.layers import BPLinear
from bpkernels.runlog import load_checkpoint
from bpkernels.train import MessagePassingTrainer, load_model


def small_tasks(n_tasks=2):
    base = data.teacher_student(120, 60, (20, 9, 3), seed=0)
    return continual.permuted_tasks(base, n_tasks, seed=1)


def test_permutations_are_seeded_distinct_and_keep_labels():
    base = data.teacher_student(50, 20, (30, 3), seed=0)
    tasks = continual.permuted_tasks(base, 4, seed=2)
    again = continual.permuted_tasks(base, 4, seed=2)
    assert tasks[0] is base
    for a, b in zip(tasks, again):
        assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_x, b.test_x)
    columns = []
    for task in tasks:
        assert torch.equal(task.train_y, base.train_y) and torch.equal(task.test_y, base.test_y)
        # each task's column order, recovered from the unpermuted features
        perm = [int((base.train_x.T == col).all(dim=1).nonzero()[0]) for col in task.train_x.T]
        assert sorted(perm) == list(range(30))
        columns.append(tuple(perm))
    assert columns[0] == tuple(range(30)) and len(set(columns)) == 4, "distinct permutations"
    assert not torch.equal(continual.permuted_tasks(base, 2, seed=3)[1].train_x, tasks[1].train_x)


def test_task_boundary_prior_is_the_previous_posterior():
    """ρ = 1: the first mini-batch of task 2 starts from exactly the fields after task 1, and
    its prior weight is 1 (θ = H_posterior)."""
    tasks = small_tasks()
    model = mlp([20, 9, 3], algo="amp", rho=1.0, seed=0, dtype=torch.float64)
    trainer = MessagePassingTrainer(model, eval_bayes=False)
    seen = []
    step = trainer.step

    def spy(x, y):
        seen.append(([l.field.clone() for l in model.bp_layers],
                     [l.mp_begin(1).rho for l in model.bp_layers]))
        return step(x, y)

    trainer.step = spy
    after_task = {}
    trainer.begin_task = lambda t: after_task.setdefault(t, [l.field.clone() for l in model.bp_layers])
    continual.train_continual(trainer, tasks, epochs_per_task=2, batch_size=30, progress=False)
    first_of_task_2 = seen[len(seen) // 2]
    for start, end in zip(first_of_task_2[0], after_task[1]):
        assert torch.equal(start, end)
    assert first_of_task_2[1] == [1.0, 1.0]


@pytest.mark.parametrize("layer_type", [BPLinear, GaussianBPLinear])
def test_anchored_prior_tempers_toward_the_fixed_anchor(layer_type):
    """set_prior("anchored") holds the current posterior as the anchor A; every later
    mini-batch's prior is θ = A + ρ·(H − A) (Ω likewise), with H at the start of that batch:
    one step equals the step with that θ given as a fixed prior, bit for bit."""
    gen = torch.Generator().manual_seed(0)
    layer = layer_type(7, 4, rho=0.9, generator=gen, dtype=torch.float64)
    gaussian = layer_type is GaussianBPLinear
    model = BPSequential(layer, BPLinear(4, 1, algo="bpi", output="sign", generator=gen,
                                         dtype=torch.float64))
    x = torch.randn(16, 7, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 2, (16,), generator=gen).double() * 2 - 1
    model.bp_step(x, y)
    anchor = (layer.field.clone(), layer.precision.clone() if gaussian else None)
    layer.set_prior("anchored")
    for _ in range(3):  # the anchor stays where it was set while H moves on
        model.bp_step(x, y)
    assert torch.equal(layer.prior_field, anchor[0]) and not torch.equal(layer.field, anchor[0])
    if gaussian:
        assert torch.equal(layer.prior_precision, anchor[1])
    twin = copy.deepcopy(model)
    twin_layer = twin.bp_layers[0]
    theta = torch.lerp(anchor[0], layer.field, 0.9)
    twin_layer.set_prior((theta, torch.lerp(anchor[1], layer.precision, 0.9)) if gaussian else theta)
    st = layer.mp_begin(1)
    assert st.rho == 1.0 and torch.equal(st.field_prior.reshape(theta.shape), theta)
    model.bp_step(x, y)
    twin.bp_step(x, y)
    assert torch.equal(layer.field, twin_layer.field) and torch.equal(layer.mag, twin_layer.mag)
    assert theta.sub(0.9 * anchor[0]).abs().max() > 0, "θ differs from plain PasP ρ·H"


@pytest.mark.parametrize("anchor", ["none", "output", "all"])
def test_trainer_anchors_the_chosen_layers_at_task_boundaries(anchor):
    tasks = small_tasks(3)
    model = mlp([20, 9, 3], algo="amp", seed=0, dtype=torch.float64)
    trainer = MessagePassingTrainer(model, eval_bayes=False, anchor=anchor,
                                    anchor_rho=0.95 if anchor == "all" else None)
    boundary = {}
    begin = trainer.begin_task

    def spy(t):
        boundary[t] = [l.field.clone() for l in model.bp_layers]
        begin(t)

    trainer.begin_task = spy
    continual.train_continual(trainer, tasks, epochs_per_task=1, batch_size=30, progress=False)
    chosen = {"none": [], "output": [1], "all": [0, 1]}[anchor]
    for i, layer in enumerate(model.bp_layers):
        if i in chosen:  # anchored at the posterior of task 2, the start of task 3
            assert layer.prior == "anchored" and torch.equal(layer.prior_field, boundary[2][i])
        else:
            assert layer.prior == "pasp" and layer.prior_field is None
    # anchor_rho replaces the hidden layers' ρ from task 2 on; the output keeps its own
    assert [l.rho for l in model.bp_layers] == ([0.95, 0.9] if anchor == "all" else [1.0001, 0.9])
    with pytest.raises(ValueError, match="anchor must be one of"):
        MessagePassingTrainer(model, anchor="hidden")
    with pytest.raises(ValueError, match="needs anchor='all'"):
        MessagePassingTrainer(model, anchor="output", anchor_rho=0.9)
    with pytest.raises(ValueError, match=r"anchor_rho must lie in \[0, 1\]"):
        MessagePassingTrainer(model, anchor="all", anchor_rho=1.5)


def test_accuracy_matrix_and_summary():
    rows = [{"task": 0, "task_accuracy": [0.5, 0.1]}, {"task": 0, "task_accuracy": [0.8, 0.1]},
            {"task": 1, "task_accuracy": [0.6, 0.7]}, {"task": 1, "task_accuracy": [0.7, 0.9]}]
    matrix = continual.accuracy_matrix(rows, 2)
    assert matrix == [[0.8, 0.1], [0.7, 0.9]]
    s = continual.summary(matrix)
    assert s["average_final_accuracy"] == pytest.approx(0.8)
    assert s["backward_transfer"] == pytest.approx(-0.1)


def test_accuracies_are_measured_on_the_right_task():
    tasks = small_tasks(3)
    model = mlp([20, 9, 3], algo="bpi", seed=0)
    trainer = MessagePassingTrainer(model, eval_bayes=False)
    rows = continual.train_continual(trainer, tasks, epochs_per_task=2, batch_size=30,
                                     progress=False)
    final = [1 - model.error(task.test_x, task.test_y) for task in tasks]
    assert rows[-1]["task_accuracy"] == final
    assert rows[-1]["test_error"] == pytest.approx(1 - final[2]), "the row's own test set is task 3's"
    assert [r["task"] for r in rows] == [0, 0, 1, 1, 2, 2]
    assert [r["task_epoch"] for r in rows] == [1, 2, 1, 2, 1, 2]


# crash at call 11: task 2, epoch 1, third batch (4 batches per epoch), resumed from task 1's
# last checkpoint; at call 14: task 2, epoch 2, resumed from task 2's own first checkpoint
@pytest.mark.parametrize("crash_at", [11, 14])
@pytest.mark.parametrize("method", ["amp", "amp-anchored", "ste", "bayesbinn"])
def test_resume_at_any_epoch_of_any_task_is_exact(tmp_path, method, crash_at):
    tasks = small_tasks()

    def new_trainer():
        if method == "amp":
            return MessagePassingTrainer(mlp([20, 9, 3], algo="amp", rho=1.0, seed=0), eval_bayes=False)
        if method == "amp-anchored":  # the anchors are part of the checkpoint
            return MessagePassingTrainer(mlp([20, 9, 3], algo="amp", seed=0), eval_bayes=False,
                                         anchor="all", anchor_rho=0.95)
        options = {"mc_samples": 0} if method == "bayesbinn" else {}
        return make_trainer(method, tasks[0], [9], total_steps=8, seed=0, **options)

    straight = new_trainer()
    rows = continual.train_continual(straight, tasks, 2, 30, run_dir=str(tmp_path / "a"),
                                     progress=False)
    interrupted = new_trainer()
    calls, step = [0], interrupted.step

    def crash(x, y):
        calls[0] += 1
        if calls[0] == crash_at:
            raise KeyboardInterrupt
        return step(x, y)

    interrupted.step = crash
    with pytest.raises(KeyboardInterrupt):
        continual.train_continual(interrupted, tasks, 2, 30, run_dir=str(tmp_path / "b"),
                                  progress=False)
    resumed = new_trainer()
    rows_b = continual.train_continual(resumed, tasks, 2, 30, run_dir=str(tmp_path / "b"),
                                       resume=True, progress=False)
    timing = ("seconds", "cpu_seconds", "eval_seconds", "bn_seconds")
    strip = lambda rs: [{k: v for k, v in r.items() if k not in timing} for r in rs]  # noqa: E731
    assert strip(rows_b) == strip(rows)
    assert continual.read_rows(str(tmp_path / "b"), 2) == rows_b
    key = "state_dict" if method.startswith("amp") else "model"
    saved, loaded = straight.state_dict()[key], resumed.state_dict()[key]
    assert saved.keys() == loaded.keys()
    for name in saved:
        assert torch.equal(saved[name], loaded[name]), name


def test_metaplastic_updates_consolidate_large_weights():
    tasks = small_tasks()
    ste = make_trainer("ste", tasks[0], [9], total_steps=10, seed=0, clip=None)
    meta = make_trainer("ste", tasks[0], [9], total_steps=10, seed=0, preset="metaplastic")
    for trainer in (ste, meta):
        with torch.no_grad():
            trainer.model.fields[0].mul_(4)  # some large hidden weights
    before = [f.detach().clone() for f in meta.model.fields]
    x, y = tasks[0].train_x[:30], tasks[0].train_y[:30]
    ste.step(x, y)
    meta.step(x, y)
    for old, plain, consolidated in zip(before, ste.model.fields, meta.model.fields):
        d_plain, d_meta = plain.detach() - old, consolidated.detach() - old
        shrink = d_plain * old < 0
        factor = 1 - torch.tanh(1.35 * old).square()
        torch.testing.assert_close(d_meta[shrink], d_plain[shrink] * factor[shrink])
        torch.testing.assert_close(d_meta[~shrink], d_plain[~shrink])
        assert shrink.any() and (~shrink).any()


def test_bayesbinn_takes_the_previous_posterior_as_prior():
    tasks = small_tasks()
    trainer = make_trainer("bayesbinn", tasks[0], [9], total_steps=8, seed=0, mc_samples=0)
    trainer.begin_task(0)
    assert all("prior" not in trainer.optimizer.state[p] for p in trainer.model.fields)
    trainer.step(tasks[0].train_x[:30], tasks[0].train_y[:30])
    trainer.begin_task(1)
    for lam in trainer.model.fields:
        assert torch.equal(trainer.optimizer.state[lam]["prior"], lam.detach())
    assert trainer.scheduler.last_epoch == 0


def test_continual_command_end_to_end(tmp_path, capsys):
    out = tmp_path / "cl"
    assert cli.main(["continual", "--dataset", "teacher", "--subset", "120", "--test-subset", "60",
                     "--hidden", "9", "--tasks", "2", "--epochs-per-task", "2", "--batch-size", "30",
                     "--methods", "amp,amp-default,amp-anchored,ste,meta", "--no-progress",
                     "--out", str(out)]) == 0
    for method in ("amp", "amp-default", "amp-anchored", "ste", "meta"):
        matrix = (out / method / "accuracy_matrix.csv").read_text().splitlines()
        assert matrix[0] == "after_task,task_1,task_2" and len(matrix) == 3
        assert (out / method / "accuracy_matrix.png").exists()
        rows = [json.loads(line) for line in
                (out / method / "task-1" / "metrics.jsonl").read_text().splitlines()]
        assert [r["method"] for r in rows] == [method, method]
    # amp-anchored (--anchor all): from task 2 on, the hidden layer's ρ is 1 − 1/(2.5 epochs ×
    # 4 batches) = 0.9, every layer's prior is anchored at the posterior of task 1
    model, _ = load_model(str(out / "amp-anchored" / "task-1" / "checkpoint.pt"))
    assert [l.rho for l in model.bp_layers] == [pytest.approx(0.9), 0.9]
    assert [l.prior for l in model.bp_layers] == ["anchored", "anchored"]
    assert (out / "continual.png").exists()
    table = (out / "summary.md").read_text()
    assert all(f"| {m} |" in table for m in ("amp", "amp-default", "amp-anchored", "ste", "meta"))
    assert "summary" not in os.listdir(out / "amp")


def test_continual_command_reads_the_layer_options_or_refuses_them(tmp_path):
    """continual builds its MLPs with --psi (one per layer), --r, --r-step, --init-std and
    --density, as train does, and masks the gradient baselines with --density too; --arch and
    --weights, which it cannot honour, are refused by name."""
    common = ["continual", "--dataset", "teacher", "--subset", "120", "--test-subset", "60",
              "--hidden", "9", "--tasks", "2", "--epochs-per-task", "1", "--batch-size", "10",
              "--no-progress"]
    out = tmp_path / "cl"
    assert cli.main([*common, "--methods", "amp-default,ste", "--psi", "0.9", "0.7",
                     "--r", "0.1", "--r-step", "0.01", "--init-std", "0.5", "--density", "0.5",
                     "--out", str(out)]) == 0
    model, state = load_model(str(out / "amp-default" / "task-1" / "checkpoint.pt"))
    assert [(l.psi, l.init_std, l.density) for l in model.bp_layers] == [(0.9, 0.5, 0.5),
                                                                        (0.7, 0.5, 0.5)]
    # r_step grows r after the first 10 mini-batches (2 tasks × 12 here); r stays 0.1 without it
    assert model.bp_layers[0].r == model.bp_layers[1].r > 0.1
    assert all(0.3 < float(l.mask.float().mean()) < 0.7 for l in model.bp_layers)
    ste = load_checkpoint(str(out / "ste" / "task-1" / "checkpoint.pt"))["trainer"]["model"]
    for i, layer in enumerate(model.bp_layers):  # the masks message passing drew, seed for seed
        assert torch.equal(ste[f"mask_{i}"], layer.mask.to(ste[f"mask_{i}"].dtype))
    for flag, why in ((["--arch", "dense9-dense10"], "it trains MLPs of --hidden"),
                      (["--weights", "gaussian"], "name the method cbpi")):
        with pytest.raises(SystemExit, match=f"{flag[0]} is not supported by continual \\({why}"):
            cli.main([*common, *flag, "--out", str(tmp_path / "refused")])
