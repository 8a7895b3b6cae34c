"""A training split whose masks are the pseudo labels written by ``stages/gen_labels.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from torch.utils.data import Dataset

from rca.data.skip import SKIPPED_FILE
from rca.errors import DataError
from rca.io import load_label_png


class WithPseudoLabels(Dataset):
    """Items of ``base`` with ``mask`` replaced by ``label_dir/<id>.png`` (255 = ignore).

    Args:
        base: a dataset from :func:`rca.data.build_dataset` built without a transform.
        label_dir: folder of pseudo-label PNGs, one per image id of ``base``.
        transform: joint image/mask transform applied after the swap (e.g. ``train_transform``).
        skip_missing: leave out the images without a pseudo label (those ``gen_labels --skip-bad``
            skipped) instead of refusing; ``ids`` are then the others.

    Raises:
        FileNotFoundError: when a pseudo label is missing (checked once, up front) and
            ``skip_missing`` is false, naming the first missing file and the stage that writes them.
        DataError: no image of ``base`` has a pseudo label, with ``skip_missing``.
    """

    def __init__(self, base, label_dir: str | Path, transform: Callable | None = None,
                 skip_missing: bool = False) -> None:
        self.base, self.label_dir, self.transform = base, Path(label_dir), transform
        has_label = [(self.label_dir / f"{i}.png").is_file() for i in base.ids]
        missing = [i for i, present in zip(base.ids, has_label) if not present]
        if missing and not skip_missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(base.ids)} pseudo labels missing, e.g. {self.label_dir / missing[0]}.png: "
                "run stages/gen_labels.py with the same config and work dir first (its data.label_split must "
                "hold every image of data.train_split; images it skipped as unreadable are listed in "
                f"{self.label_dir / SKIPPED_FILE}: pass --skip-bad to train without them)"
            )
        self.indices = [index for index, present in enumerate(has_label) if present]
        if not self.indices:
            raise DataError(f"no image of the training split has a pseudo label in {self.label_dir}: "
                            "run stages/gen_labels.py with the same config and work dir first")
        for name in ("class_names", "num_classes", "has_background", "palette"):
            setattr(self, name, getattr(base, name))
        self.ids = [base.ids[index] for index in self.indices]
        self.has_masks = True

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.base[self.indices[index]])
        item["mask"] = load_label_png(self.label_dir / f"{item['id']}.png")
        return self.transform(item) if self.transform is not None else item
