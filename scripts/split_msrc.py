"""Write a train/val split of MSRC-v2 that keeps every image group on both sides.

MSRC-v2 ids are ``<group>_<n>_s``; each of the 20 groups is one photo theme (group 8 bicycles,
group 9 sheep, ...). A split cut from the sorted id list, as in ``shared/data/msrc_v2``, puts whole
groups into val: its 60 val images are groups 7-9 only, and train keeps 1 bicycle and 5 sheep images.
This script orders the ids by (group, n) and sends every ``k``-th of that order to val, about 1/k of each
group (k = 7 gives 360/60 of 420).

    python scripts/split_msrc.py ../shared/data/msrc_v2 data/splits/msrc_v2

Use the lists with ``--set data.options.split_dir=data/splits/msrc_v2``.
"""
from __future__ import annotations

import sys
from pathlib import Path

from rca.cli import make_parser
from rca.errors import DataError, add_debug_arg, run_cli


def msrc_key(image_id: str) -> tuple[int, int]:
    """(group, n) of an MSRC id ``<group>_<n>_s``; :class:`DataError` names the id when it has another form."""
    parts = image_id.split("_")
    if len(parts) != 3 or not (parts[0].isdigit() and parts[1].isdigit()):
        raise DataError(f"{image_id!r} is not an MSRC-v2 id of the form <group>_<n>_s")
    return int(parts[0]), int(parts[1])


def main(argv=None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument("root", type=Path, help="MSRC-v2 folder with train.txt and val.txt")
    parser.add_argument("out", type=Path, help="folder for the new train.txt and val.txt")
    parser.add_argument("--every", type=int, default=7, help="every k-th id in (group, n) order goes to val (7)")
    add_debug_arg(parser)
    args = parser.parse_args(argv)
    from rca.data.base import read_id_list  # after parsing: --help answers without torch
    from rca.io import atomic_open

    hint = "Give the MSRC-v2 folder that holds train.txt and val.txt"
    ids = sorted({i for split in ("train", "val") for i in read_id_list(args.root / f"{split}.txt", hint)},
                 key=msrc_key)
    val = ids[args.every - 1::args.every]
    in_val = set(val)
    train = [i for i in ids if i not in in_val]  # ids are sorted already
    for name, split in (("train", train), ("val", val)):
        with atomic_open(args.out / f"{name}.txt", "w") as f:
            f.writelines(f"{i}\n" for i in split)
    print(f"{args.out}: train {len(train)}, val {len(val)} of {len(ids)} ids")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
