#!/usr/bin/env bash
# The whole pipeline: train_cls -> gen_labels (with 8 sample panels) -> train_seg, then the summary
# table and the report (DIR/report.html, DIR/report.md).
#
#   bash scripts/run_all.sh [CONFIG] [--set key=value ...] [--work-dir DIR]
#
# With no CONFIG it runs the synthetic demo (rca/configs/demo.yaml), which needs no dataset.
# Every stage skips the work already on disk, so a second run (or a run after a crash) only does
# what is missing. Environment: CRF_PROCESSES (default 2), the processes making gen_labels' CRF
# pseudo labels (its --crf-processes; DataLoader workers are the config's data.num_workers, see
# README "Parallelism"); PYTHON, the interpreter. The first stage that fails stops the script with
# its name.
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python}

config=rca/configs/demo.yaml
if [[ $# -gt 0 && $1 != --* ]]; then
  config=$1
  shift
fi
common=(--config "$config" "$@")

run_stage() {
  local name=$1
  shift
  echo "=== $name"
  if ! "$python" "$@"; then
    echo "run_all: stage $name failed (config $config)" >&2
    exit 1
  fi
}

run_stage train_cls stages/train_cls.py "${common[@]}" --resume
run_stage gen_labels stages/gen_labels.py "${common[@]}" --crf-processes "${CRF_PROCESSES:-2}" --vis 8
run_stage train_seg stages/train_seg.py "${common[@]}" --resume
run_stage summary scripts/summary.py "${common[@]}"
