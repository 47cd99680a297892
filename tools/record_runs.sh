#!/usr/bin/env bash
# record_runs.sh OUT: short seeded training runs of every algorithm (dense and conv nets, sign and
# argmax outputs, masks, τ_max > 1, full batch) and of the gradient baselines, 1 thread, on a
# Fashion-MNIST subset. Run it before and after a refactor, then
#   python tools/compare_runs.py BEFORE AFTER
# to check that the same seeds give the same metrics and bit-identical fields.
set -euo pipefail
OUT=$1; mkdir -p "$OUT"
mp="--subset 6000 --test-subset 2000 --epochs 2 --threads 1 --no-progress --seed 3"
gd="--subset 3000 --test-subset 1000 --epochs 2 --threads 1 --no-progress --seed 3"
run() { name=$1; shift; python -m bpkernels train --run-dir "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1 || echo "FAILED $name (see $OUT/$name.log)"; }
run mlp-bp-tau3    $mp --algo bp --tau-max 3 --hidden 101 101
run mlp-bpi        $mp --algo bpi --hidden 301 301
run mlp-amp        $mp --algo amp --hidden 301 301
run mlp-amp-tau3   $mp --algo amp --tau-max 3 --hidden 201
run mlp-mf         $mp --algo mf --hidden 301 301
run mlp-mf-sparse  $mp --algo mf --density 0.5 --r 0.1 --r-step 0.01 --tau-max 2 --hidden 201
run eo-bpi         $mp --algo bpi --task evenodd --hidden 201 201
run eo-amp         $mp --algo amp --task evenodd --hidden 201 201
run eo-bp-tau2     $mp --algo bp --task evenodd --tau-max 2 --hidden 101
run fb-mf          $mp --algo mf --batch-size 0 --tau-max 2 --r 0.2 --r-step 0.01 --hidden 101
run conv-bpi       $mp --algo bpi --arch conv16k5s2p2-conv32k3s2p1-dense101-dense10
run conv-amp       $mp --algo amp --arch conv16k5s2p2-conv32k3s2p1-dense101-dense10
run conv-amp-tau2  $mp --algo amp --tau-max 2 --arch conv8k5s2p2-conv16k3s2p1-dense10
run conv-mf        $mp --algo mf --arch conv16k5s2p2-conv32k3s2p1-dense101-dense10
run conv-bp        $mp --algo bp --arch conv8k5s2p2-dense10
run conv-mf-sparse $mp --algo mf --density 0.7 --arch conv8k3s2p1-conv16k3s2p1-dense10
run ste            $gd --method ste --hidden 201 201
run bayesbinn      $gd --method bayesbinn --hidden 201 --opt mc_samples=2
run st             $gd --method st --hidden 201
run ste-conv       $gd --method ste --arch conv8k5s2p2-conv16k3s2p1-dense10
run ste-eo         $gd --method ste --task evenodd --hidden 101
