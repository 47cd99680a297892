"""Smoke runs of the paper-reproduction scripts (benchmarks/paper/): each on a tiny generated
MNIST for one epoch, checking the table (Markdown and CSV), the figure and the logs; Table 1
also continued for a second epoch from its run folders."""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys

import pytest

from test_datasets import make_mnist

from bpkernels import Ramp
from bpkernels.runlog import load_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def run_script(name: str, tmp_path, *extra: str) -> str:
    data_dir = tmp_path / "mnist"
    if not data_dir.exists():
        make_mnist(str(data_dir), n_train=300, n_test=100)
    cmd = [sys.executable, os.path.join(REPO, "benchmarks", "paper", f"{name}.py"),
           "--dataset", "mnist", "--data-dir", str(data_dir), "--subset", "260",
           "--test-subset", "80", "--epochs", "1", "--seeds", "1", "--threads", "1",
           "--out", str(tmp_path / "out"), "--runs", str(tmp_path / "runs"), *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def check_outputs(out, name: str, n_rows: int) -> list[dict]:
    rows = read_csv(out / f"{name}.csv")
    assert len(rows) == n_rows
    md = (out / f"{name}.md").read_text()
    assert "**Reduced budget**" in md and "do not reproduce the paper" in md
    assert (out / f"{name}.png").stat().st_size > 1000
    assert json.loads((out / "meta.json").read_text())["epochs"] == 1
    return rows


def test_table1(tmp_path):
    stdout = run_script("table1", tmp_path)
    out = tmp_path / "out"
    rows = check_outputs(out, "table1", 10)
    assert "1 seed(s) instead of the paper's 5" in stdout
    binarynet = next(r for r in rows if r["method"] == "BinaryNet (paper)" and r["task"] == "10 classes")
    assert binarynet["paper test error %"] == "2.2 ± 0.1"  # MNIST, 10 classes
    assert binarynet["within the paper's error bars"] in ("yes", "no")
    assert binarynet["Bayesian test error %"] == binarynet["ensemble of 1 seeds: point-wise / Bayesian %"] == ""
    for r in rows:  # message passing: an ensemble of one seed is that seed's final network
        if r["method"] in ("AMP", "MF", "BPI"):
            point, bayes = r["ensemble of 1 seeds: point-wise / Bayesian %"].split(" / ")
            assert float(point) == float(r["test error %"].split(" ± ")[0])
            assert float(bayes) == float(r["Bayesian test error %"].split(" ± ")[0])
    assert len(os.listdir(out / "logs")) == 10
    log = out / "logs" / "evenodd-amp-seed0.jsonl"
    first = log.read_text().splitlines()
    # started again with more epochs: the run folder is continued, its first epoch kept
    run_script("table1", tmp_path, "--epochs", "2", "--methods", "AMP", "--tasks", "evenodd")
    again = log.read_text().splitlines()
    assert len(again) == 2 and again[0] == first[0]
    assert len(read_csv(out / "table1.csv")) == 1


def test_bayes_fig2(tmp_path):
    run_script("bayes_fig2", tmp_path)
    rows = check_outputs(tmp_path / "out", "bayes_fig2", 2)
    assert all(r["Bayesian test error %"] for r in rows)
    # one setting alone: read back from its run folder, the table holds its row only
    run_script("bayes_fig2", tmp_path, "--settings", "paper")
    alone = read_csv(tmp_path / "out" / "bayes_fig2.csv")
    assert [r["setting"] for r in alone] == ["ρ = 0.9999 (paper)"] and alone[0] == rows[0]


def test_sparsity(tmp_path):
    run_script("sparsity", tmp_path, "--densities", "1", "0.3", "--hidden", "21")
    rows = check_outputs(tmp_path / "out", "sparsity", 2)
    assert [r["density"] for r in rows] == ["1", "0.3"]
    assert sorted(os.listdir(tmp_path / "out" / "logs")) == [
        "bpi-21-d0.3-seed0.jsonl", "bpi-21-d1.0-seed0.jsonl", "ste-21-d0.3-seed0.jsonl",
        "ste-21-d1.0-seed0.jsonl"]


def test_beyond(tmp_path):
    run_script("beyond", tmp_path, "--configs", "default", "tau2", "psi-ramp0.95")
    rows = check_outputs(tmp_path / "out", "beyond", 3)
    assert [r["configuration"] for r in rows] == ["AMP 2×501, library defaults",
                                                  "AMP 2×501, τ_max = 2",
                                                  "AMP 2×501, ψ 0.8 → 0.95 over the run"]
    for r in rows:  # an ensemble of one seed is that seed's network
        assert float(r["ensemble of 1 point-wise %"]) == float(r["point-wise test error %"].split(" ± ")[0])
        assert float(r["ensemble of 1 Bayesian %"]) == float(r["Bayesian test error %"].split(" ± ")[0])
    logs = tmp_path / "out" / "logs"
    assert sorted(os.listdir(logs)) == ["amp-default-seed0.jsonl", "amp-psi-ramp0.95-seed0.jsonl",
                                        "amp-tau2-seed0.jsonl"]
    # the ramp spans the run's one epoch, so that epoch ran at its end value
    state = load_checkpoint(str(tmp_path / "runs" / "mnist" / "amp-psi-ramp0.95" / "seed0" /
                                "checkpoint.pt"))
    assert state["config"]["ramps"] == [dict(param="psi", start=0.8, end=0.95, epochs=1,
                                             layers="all")]
    assert {spec["psi"] for spec in state["trainer"]["model_config"]} == {0.95}


def test_beyond_schedules_span_the_run_or_its_first_half():
    """A configuration's ramps are written with {epochs} or {half} of the run's epochs."""
    sys.path.insert(0, os.path.join(REPO, "benchmarks", "paper"))
    import beyond

    assert beyond.config_ramps("rho-anneal", 100) == [Ramp("rho", 0.9999, 1.0002, 100, "hidden")]
    assert beyond.config_ramps("rho-anneal-hold", 100) == [Ramp("rho", 0.9999, 1.0001, 50, "hidden")]
    assert beyond.config_ramps("rho-anneal-hold", 1) == [Ramp("rho", 0.9999, 1.0001, 1, "hidden")]
    assert beyond.config_ramps("default", 100) == []


def check_averaged_columns(out, experiment: str, log_name: str) -> None:
    """The averaged network's table cells are its last logged errors."""
    (row,) = check_outputs(out, experiment, 1)
    last = json.loads((out / "logs" / log_name).read_text().splitlines()[-1])
    for column, key in (("point-wise", "avg_test_error"), ("Bayesian", "avg_test_error_bayes")):
        cell = row[f"averaged from epoch 1, {column} %"]
        assert float(cell.split(" ± ")[0]) == pytest.approx(100 * last[key], abs=0.005)


def test_paper_scripts_with_the_posterior_average(tmp_path):
    """--average-from (beyond.py, bayes_fig2.py) adds the averaged network's columns and keeps
    its runs and logs apart."""
    run_script("beyond", tmp_path, "--configs", "rho0.9999", "--average-from", "1")
    check_averaged_columns(tmp_path / "out", "beyond", "amp-rho0.9999-avg1-seed0.jsonl")
    (row,) = read_csv(tmp_path / "out" / "beyond.csv")
    for column in ("point-wise", "Bayesian"):  # an ensemble of one is that seed's average
        assert row[f"ensemble of 1 averaged {column} %"] == \
            row[f"averaged from epoch 1, {column} %"].split(" ± ")[0]
    state = load_checkpoint(str(tmp_path / "runs" / "mnist" / "amp-rho0.9999-avg1" / "seed0" /
                                "checkpoint.pt"))
    assert state["config"]["average_from"] == 1 and state["trainer"]["average"]["count"] == 2

    fig2 = tmp_path / "fig2"
    fig2.mkdir()
    run_script("bayes_fig2", fig2, "--settings", "paper", "--average-from", "1")
    check_averaged_columns(fig2 / "out", "bayes_fig2", "bpi-rho0.9999-avg1-seed0.jsonl")


def test_budget_note_at_the_papers_budget():
    """Fewer seeds than the paper at its epochs and data is said, not called a reduced budget."""
    sys.path.insert(0, os.path.join(REPO, "benchmarks", "paper"))
    import paper_common

    args = argparse.Namespace(epochs=100, seeds=3, subset=None, test_subset=None,
                              dataset="fashion-mnist", device="cpu", threads=1, beside="")
    note = paper_common.budget_note(args, "table1", 60.0, [[{"seconds": 1.0}]])
    assert "The paper's budget: 100 epochs on all examples; 3 seed(s) instead of the paper's 5." in note
    assert "Reduced budget" not in note and "do not reproduce" not in note
    args.epochs = 10
    assert "**Reduced budget**: 10 epoch(s) instead of 100; 3 seed(s) instead of the paper's 5." in \
        paper_common.budget_note(args, "table1", 60.0, [[{"seconds": 1.0}]])
