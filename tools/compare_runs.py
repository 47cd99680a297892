"""Compares two folders of run folders (``tools/record_runs.sh`` before and after a change):
per run, the metrics rows without their timing fields, and every tensor of the final
checkpoint's model state bit for bit. Exits 1 on any difference.

    python tools/compare_runs.py BEFORE AFTER
"""

from __future__ import annotations

import json
import os
import sys

import torch

TIMING = {"seconds", "cpu_seconds", "eval_seconds", "bn_seconds", "peak_mem_bytes"}


def model_state(path: str) -> dict:
    """The model tensors of a checkpoint (this version's format, or the plain torch.save of
    versions before 0.2, which is only read from folders you recorded yourself)."""
    from bpkernels.runlog import CheckpointError, load_checkpoint

    try:
        state = load_checkpoint(path)
    except CheckpointError:
        state = torch.load(path, weights_only=False)
    trainer = state.get("trainer", state)
    return trainer.get("state_dict") or trainer.get("model")


def rows(path: str) -> list[dict]:
    with open(path) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]


def main(before: str, after: str) -> int:
    same_everywhere = True
    for name in sorted(os.listdir(after)):
        a, b = os.path.join(after, name), os.path.join(before, name)
        if not os.path.exists(os.path.join(a, "metrics.jsonl")):
            continue
        if not os.path.exists(os.path.join(b, "metrics.jsonl")):
            print(f"{name}: missing in {before}")
            same_everywhere = False
            continue
        same_rows = rows(os.path.join(a, "metrics.jsonl")) == rows(os.path.join(b, "metrics.jsonl"))
        sa, sb = model_state(os.path.join(a, "checkpoint.pt")), model_state(os.path.join(b, "checkpoint.pt"))
        shared = [k for k in sa if k in sb]
        same_state = all(torch.equal(sa[k], sb[k]) for k in shared)
        only = sorted(set(sa) ^ set(sb))
        print(f"{name}: metrics {'identical' if same_rows else 'DIFFER'}; {len(shared)} tensors "
              f"{'bit-identical' if same_state else 'DIFFER'}"
              + (f"; in one state only: {only}" if only else ""))
        same_everywhere &= same_rows and same_state
    print("all identical" if same_everywhere else "DIFFERENCES")
    return 0 if same_everywhere else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
