"""Collects the continuous-weight comparison (benchmarks/results/gaussian_cpu.md) from run
folders of ``bpkernels compare`` (methods cbpi, bpi, amp, ste) with a float-weight STE run
(``bpkernels train --method ste --opt binary_weights=false``) in ``<compare>/ste-float``.

Usage: python benchmarks/gaussian_results.py OUT.csv COMPARE_DIR [COMPARE_DIR ...]
A compare folder is named h<width>x2-<task>. Writes the CSV (one row per method and epoch)
and prints the Markdown table of the last epoch of every run (training seconds of an epoch,
evaluation excluded: the range of the wall time over the epochs, the mean process CPU time).
"""

from __future__ import annotations

import csv
import json
import os
import sys

LABELS = {"cbpi": "cbpi (Gaussian weights, message passing)", "bpi": "bpi (binary)",
          "amp": "amp (binary)", "ste": "ste (binary weights, SGD/Adam)",
          "ste-float": "ste-float (float weights, sign activations, SGD/Adam)"}


def pct(value) -> str:
    return "" if value in (None, "") else f"{100 * float(value):.2f}"


def rows_of(folder: str) -> list[dict]:
    width, task = os.path.basename(folder.rstrip("/")).split("-", 1)
    net = f"2×{width.removeprefix('h').split('x')[0]}"
    rows = []
    for method in ("cbpi", "bpi", "amp", "ste", "ste-float"):
        path = os.path.join(folder, method, "metrics.jsonl")
        if not os.path.exists(path):
            continue
        for line in open(path):
            m = json.loads(line)
            rows.append({"task": task, "net": net, "method": method, "epoch": m["epoch"],
                         "test_error_%": pct(m["test_error"]),
                         "test_error_bayes_%": pct(m.get("test_error_bayes")),
                         "train_error_%": pct(m["train_error"]),
                         "seconds_per_epoch": f"{m['seconds']:.1f}",
                         "cpu_seconds_per_epoch": f"{m['cpu_seconds']:.1f}"})
    return rows


def main(out_csv: str, folders: list[str]) -> None:
    rows = [row for folder in folders for row in rows_of(folder)]
    with open(out_csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    last, seconds, cpu = {}, {}, {}
    for row in rows:
        key = (row["task"], row["net"], row["method"])
        last[key] = row
        seconds.setdefault(key, []).append(float(row["seconds_per_epoch"]))
        cpu.setdefault(key, []).append(float(row["cpu_seconds_per_epoch"]))
    print("| task | net | method | epochs | test error % (point-wise) | test error % (Bayes) "
          "| train error % | s / epoch (min–max over epochs) | CPU s / epoch (mean) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key, row in last.items():
        task, net, method = key
        lo, hi = min(seconds[key]), max(seconds[key])
        span = f"{lo:.1f}" if lo == hi else f"{lo:.1f}–{hi:.1f}"
        print(f"| {task} | {net} | {LABELS[method]} | {row['epoch']} | {row['test_error_%']} | "
              f"{row['test_error_bayes_%'] or '—'} | {row['train_error_%']} | {span} | "
              f"{sum(cpu[key]) / len(cpu[key]):.1f} |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
