"""Print one table of the pipeline's headline numbers from the three stages' ``metrics.json``.

    python scripts/summary.py --config rca/configs/<exp>.yaml [--set ...] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rca.config import add_config_args, config_from_args


def read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def main(argv=None) -> int:
    config, work_dir = config_from_args(add_config_args(argparse.ArgumentParser(description=__doc__)).parse_args(argv))
    cls, labels, seg = (read(work_dir / part / "metrics.json") for part in ("cls", "labels", "seg"))
    seed, seed_crf, pseudo = (labels.get(key, {}) for key in ("cam_seed", "cam_seed_crf", "pseudo_label"))
    oracle = labels.get("oracle_sweep", {})
    at = "argmax" if seed.get("threshold") is None else f"threshold {seed['threshold']:.2f}"
    scored = f"labels for {labels.get('label_split')}, scored on {labels.get('score_split')}"
    rows = [
        ("classifier val tag mAP", cls.get("best_val_map"), f"{config.cls.method}, split {config.data.val_split}"),
        ("CAM seed mIoU", seed.get("miou"), f"{at}, {scored}" if seed else ""),
        ("CAM seed + CRF mIoU", seed_crf.get("miou"), f"{at}, CRF {seed_crf.get('crf')}" if seed_crf else ""),
        ("pseudo-label mIoU (strict)", pseudo.get("strict_miou"), ""),
        ("pseudo-label mIoU (lenient)", pseudo.get("lenient_miou"),
         f"{pseudo['labelled_fraction']:.1f}% labelled" if "labelled_fraction" in pseudo else ""),
        ("segmentation val mIoU", seg.get("best_val_miou"), f"DeepLab-v2 on {config.seg.labels} labels"),
        ("oracle: best CAM seed mIoU", oracle.get("best_miou"),
         f"threshold {oracle['best_threshold']:.2f} picked on the scored masks (upper bound)" if oracle else ""),
    ]
    print(f"summary of {work_dir} (config {config.name})")
    for name, value, note in rows:
        shown = "n/a" if value is None else f"{value:6.2f}"
        print(f"  {name:<28} {shown:>6}  {note}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
