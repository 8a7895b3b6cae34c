"""The three class numberings of the pipeline, and the one place that converts between them.

* **label value**: a pixel value of a mask or pseudo label, ``0 .. num_classes - 1`` (255 = ignore);
  the index into ``class_names``. With a background class (VOC, COCO) it is label 0.
* **tag index** ``j``: a position in the image-level tag vector, ``(num_tags,)``, which has no
  entry for background. With a background class tag ``j`` is label ``j + 1`` and
  ``num_tags = num_classes - 1``; without one (MSRC, CamVid, Cityscapes) tag ``j`` is label ``j``.
  The classifier's scores and CAMs are indexed by tag.
* **compact index** ``t``: a channel of one image's score stack, which holds only the classes that
  image is tagged with: ``[background, tagged classes...]`` for rules that model background
  (``t = 0`` is background, ``t >= 1`` the ``t``-th tagged class), ``[tagged classes...]`` for rules
  that do not. The dense CRF works on this stack.

:class:`LabelSpace` converts tags <-> labels for one dataset; :func:`compact_lookup` turns compact
indices back into label values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BACKGROUND = 0  # the label value of background on datasets that have it


@dataclass(frozen=True)
class LabelSpace:
    """The classes of a dataset: their names (index = label value) and whether label 0 is background.

    Args:
        class_names: every class name, background first when there is one.
        has_background: whether label 0 is a background class (it then gets no tag).
    """

    class_names: tuple[str, ...]
    has_background: bool

    @property
    def num_classes(self) -> int:
        """Number of label values (background included)."""
        return len(self.class_names)

    @property
    def offset(self) -> int:
        """``label value - tag index``: 1 with a background class, else 0."""
        return int(self.has_background)

    @property
    def num_tags(self) -> int:
        """Length of the tag vector (the classifier's number of outputs)."""
        return self.num_classes - self.offset

    @property
    def tag_names(self) -> list[str]:
        """Class names in tag order (background left out)."""
        return list(self.class_names[self.offset:])

    @classmethod
    def unnamed(cls, num_classes: int, has_background: bool) -> "LabelSpace":
        """A label space whose class names are the label values as strings."""
        return cls(tuple(str(value) for value in range(num_classes)), has_background)

    def tag_to_label(self, tags) -> np.ndarray:
        """Tag indices (an int or an integer array) -> int64 label values."""
        return np.asarray(tags, dtype=np.int64) + self.offset

    def tags_of_mask(self, mask: np.ndarray, ignore_index: int = 255) -> np.ndarray:
        """Image-level tags of a label map: ``(num_tags,)`` float32, 1 for each class present.

        Ignore pixels (``ignore_index``) and background do not count.
        """
        values = mask[mask != ignore_index].ravel()
        present = (np.bincount(values, minlength=self.num_classes)[:self.num_classes] > 0).astype(np.float32)
        return present[self.offset:]


def compact_lookup(classes: Sequence[int] | np.ndarray, with_background: bool) -> np.ndarray:
    """Label value of each compact index of a score stack over an image's tagged classes.

    Args:
        classes: ``(T,)`` label values of the image's tagged classes, in stack order.
        with_background: whether the stack starts with a background channel (label 0).

    Returns:
        ``(T + 1,)`` int64 ``[0, classes...]`` with background, else ``(T,)`` ``classes``; index it
        with an argmax map to get labels: ``compact_lookup(classes, True)[scores.argmax(0)]``.
    """
    classes = np.asarray(classes, dtype=np.int64)
    if not with_background:
        return classes
    return np.concatenate([np.full(1, BACKGROUND, dtype=np.int64), classes])
