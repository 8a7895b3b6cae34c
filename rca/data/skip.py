"""``--skip-bad``: go on past unusable dataset items, listing each one in a file.

Without the flag, the first item that cannot be used (:class:`rca.errors.BadItemError`: a missing,
truncated or corrupt image or mask, a mask of another size than its image, label values outside
the class range) stops the stage with a message naming it. With it, the stage lists the item in
``skipped.txt`` in its output folder (``<id><TAB><reason>``, one line per item however often it is
met) and goes on:

* training (``train_cls``, ``train_seg``), :class:`SkipBad`: the item is replaced by the next usable
  item of the split, so batches keep their size and a resumed run meets the same replacements;
* ``gen_labels``, :func:`read_or_skip`: the image gets no CAM and no pseudo label and is left out of
  the scores; ``train_seg --skip-bad`` then trains without it
  (:class:`rca.data.pseudo.WithPseudoLabels` with ``skip_missing``).

Validation splits are never skipped: a score over fewer images would not compare with other runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from rca.errors import BadItemError, DataError

SKIPPED_FILE = "skipped.txt"
"""Name of the list of skipped items in a stage's output folder."""


def read_skipped(log_file: str | os.PathLike) -> dict[str, str]:
    """``{item id: reason}`` listed in ``log_file`` (empty when the file does not exist)."""
    path = Path(log_file)
    if not path.is_file():
        return {}
    lines = path.read_text().splitlines()
    return dict(line.split("\t", 1) for line in lines if "\t" in line)


def log_skipped(log_file: str | os.PathLike, item_id: str, error: BaseException) -> None:
    """Add ``item_id`` and the reason (``error``'s message) to ``log_file``, unless already listed.

    Several processes (data-loader workers, ranks) may append at once: each line is one small
    ``write`` to a file opened for appending, and a rare race lists an item twice.
    """
    if item_id in read_skipped(log_file):
        return
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    reason = " ".join(str(error).split())
    with open(log_file, "a") as f:
        f.write(f"{item_id}\t{reason}\n")


def read_or_skip(dataset, index: int, log_file: str | os.PathLike | None) -> dict[str, Any] | None:
    """``dataset[index]``, or ``None`` when the item is unusable and ``log_file`` is given (then it
    is listed there).

    Raises:
        BadItemError: the item is unusable and ``log_file`` is ``None``.
    """
    try:
        return dataset[index]
    except BadItemError as error:
        if log_file is None:
            raise
        log_skipped(log_file, dataset.ids[index], error)
        return None


class SkipBad(Dataset):
    """``dataset`` in which an unusable item is listed in ``log_file`` and replaced by the next usable one.

    Item ``i`` is ``dataset[i]`` if that reads; otherwise ``dataset[i + 1]``, ``dataset[i + 2]``, ...
    (wrapping around), each unusable one listed. The replacement depends only on the files, so
    seeded augmentation (:class:`rca.engine.seeding.SeededItems`) and resumed runs see the same
    items. Other attributes (``ids``, ``class_names``, ``label_space``, ...) are ``dataset``'s.

    Raises:
        DataError: from ``__getitem__``, when no item of the split can be used.
    """

    def __init__(self, dataset, log_file: str | os.PathLike) -> None:
        self.dataset, self.log_file = dataset, Path(log_file)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling in a worker): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int) -> dict[str, Any]:
        for offset in range(len(self.dataset)):
            item = read_or_skip(self.dataset, (index + offset) % len(self.dataset), self.log_file)
            if item is not None:
                return item
        raise DataError(f"no item of the split can be used: every one is listed in {self.log_file}")
