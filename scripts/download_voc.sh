#!/usr/bin/env bash
# Fetch PASCAL VOC 2012 trainval and SBD (the official archives) and build SegmentationClassAug,
# train_aug.txt and cls_labels.npy. Needs internet, ~3.3 GB of downloads and ~6 GB of disk.
#   bash scripts/download_voc.sh [DATA_DIR]        (default: data)
# Result: DATA_DIR/VOCdevkit/VOC2012 (set data.root to it) and DATA_DIR/benchmark_RELEASE.
# VOC 2012 test images need an account on the evaluation server (host.robots.ox.ac.uk:8080);
# unpack VOC2012test.tar into the same VOCdevkit by hand.
set -euo pipefail
DATA_DIR="${1:-data}"
mkdir -p "$DATA_DIR"
cd "$DATA_DIR"
fetch() {  # URL: download once (resumable), keep the archive
    local name
    name="$(basename "$1")"
    [ -f "$name.done" ] || { wget -c "$1" -O "$name" && touch "$name.done"; }
}
fetch http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar
fetch http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz
[ -d VOCdevkit/VOC2012/JPEGImages ] || tar -xf VOCtrainval_11-May-2012.tar
[ -d benchmark_RELEASE/dataset/cls ] || tar -xzf benchmark.tgz
cd - > /dev/null
python "$(dirname "$0")/prepare_voc.py" --voc "$DATA_DIR/VOCdevkit/VOC2012" --sbd "$DATA_DIR/benchmark_RELEASE" \
    --processes "$(nproc)"
