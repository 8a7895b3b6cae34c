"""A training split whose masks are the pseudo labels written by ``stages/gen_labels.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from torch.utils.data import Dataset

from rca.io import load_label_png


class WithPseudoLabels(Dataset):
    """Items of ``base`` with ``mask`` replaced by ``label_dir/<id>.png`` (255 = ignore).

    Args:
        base: a dataset from :func:`rca.data.build_dataset` built without a transform.
        label_dir: folder of pseudo-label PNGs, one per image id of ``base``.
        transform: joint image/mask transform applied after the swap (e.g. ``train_transform``).

    Raises:
        FileNotFoundError: when a pseudo label is missing (checked once, up front), naming the first
            missing file and the stage that writes them.
    """

    def __init__(self, base, label_dir: str | Path, transform: Callable | None = None) -> None:
        self.base, self.label_dir, self.transform = base, Path(label_dir), transform
        missing = [i for i in base.ids if not (self.label_dir / f"{i}.png").is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(base.ids)} pseudo labels missing, e.g. {self.label_dir / missing[0]}.png: "
                "run stages/gen_labels.py with the same config and work dir first (its data.label_split must "
                "hold every image of data.train_split)"
            )
        for name in ("ids", "class_names", "num_classes", "has_background", "palette"):
            setattr(self, name, getattr(base, name))
        self.has_masks = True

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.base[index])
        item["mask"] = load_label_png(self.label_dir / f"{item['id']}.png")
        return self.transform(item) if self.transform is not None else item
