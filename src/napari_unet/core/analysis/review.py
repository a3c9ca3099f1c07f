"""The review queue: predicted objects worst first, with likely misses among them.

Each item is either a predicted object (its label id, its ``quality``) or a likely miss (a
foreground region with no label, :func:`~.objects.likely_misses`); a miss ranks as if its quality
were ``1 - p(foreground)``, so that a region the network is sure about but that has no label comes
early. The queue remembers which items were reviewed (accepted, deleted, or looked at and left as
a miss) and moves between them; it holds no image data beyond the items' positions.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from .objects import Misses
from .quality import QualityResult

OBJECT = "object"
MISS = "miss"


@dataclass(frozen=True)
class Item:
    """One place to look at.

    Attributes:
        kind: :data:`OBJECT` or :data:`MISS`.
        ident: the label id of an object; the region number (1..M) of a miss.
        quality: the chance that what is there now is right.
        centroid: its centre in array coordinates (one value per labels axis).
        extent: the size of its bounding box along each axis, in pixels.
    """

    kind: str
    ident: int
    quality: float
    centroid: tuple[float, ...]
    extent: tuple[int, ...]

    def describe(self) -> str:
        """A short line for the list, e.g. ``"#12  quality 0.23"``."""
        if self.kind == MISS:
            return f"possible miss {self.ident}  quality {self.quality:.2f}"
        return f"#{self.ident}  quality {self.quality:.2f}"


@dataclass
class ReviewQueue:
    """Items worst first and what was done with them.

    Attributes:
        items: the items, lowest quality first.
        position: index of the current item (-1 before the first move).
        status: item index -> ``"accepted"``, ``"deleted"``, ``"edited"`` (its pixels were
            painted over: the user has corrected it already) or ``"seen"`` (a miss looked at).
    """

    items: list[Item]
    position: int = -1
    status: dict[int, str] = field(default_factory=dict)

    @property
    def current(self) -> Item | None:
        """The item at :attr:`position`, or None."""
        if 0 <= self.position < len(self.items):
            return self.items[self.position]
        return None

    def next(self, edited: Collection[int] = ()) -> Item | None:
        """Move to the next item not reviewed yet (after the current one, then from the start);
        None when every item was reviewed.

        Args:
            edited: ids of objects whose pixels the user has changed (painted, erased, filled
                over). Such an object was corrected already: it is marked ``"edited"`` and
                skipped, as is, say, the second fragment of a nucleus once the user has
                repainted the whole nucleus from the first.
        """
        n = len(self.items)
        for step in range(1, n + 1):
            index = (self.position + step) % n if self.position >= 0 else step - 1
            if index in self.status:
                continue
            item = self.items[index]
            if item.kind == OBJECT and item.ident in edited:
                self.status[index] = "edited"
                continue
            self.position = index
            return item
        return None

    def previous(self) -> Item | None:
        """Move to the item before the current one (reviewed or not); None at the start."""
        if self.position <= 0:
            return None
        self.position -= 1
        return self.items[self.position]

    def go(self, index: int) -> Item:
        """Move to item ``index``."""
        self.position = int(index)
        return self.items[self.position]

    def mark(self, status: str, index: int | None = None) -> None:
        """Record what was done with item ``index`` (default: the current one)."""
        index = self.position if index is None else index
        if 0 <= index < len(self.items):
            self.status[index] = status

    def index_of(self, ident: int, kind: str = OBJECT) -> int | None:
        """The index of the object (or miss) ``ident``, or None."""
        for index, item in enumerate(self.items):
            if item.kind == kind and item.ident == ident:
                return index
        return None

    def counts(self) -> dict[str, int]:
        """``reviewed``, ``remaining``, ``accepted``, ``deleted``, ``edited``, ``objects``,
        ``misses``."""
        values = list(self.status.values())
        return {
            "reviewed": len(self.status),
            "remaining": len(self.items) - len(self.status),
            "accepted": values.count("accepted"),
            "deleted": values.count("deleted"),
            "edited": values.count("edited"),
            "objects": sum(item.kind == OBJECT for item in self.items),
            "misses": sum(item.kind == MISS for item in self.items),
        }


def _places(regions: np.ndarray, ids: np.ndarray) -> tuple[list[tuple], list[tuple]]:
    """Centroids and bounding-box extents of the regions ``ids`` of an integer array."""
    if len(ids) == 0:
        return [], []
    centroids = ndi.center_of_mass(np.ones(regions.shape, np.float32), regions, ids)
    slices = ndi.find_objects(regions, max_label=int(ids.max()))
    extents = []
    for ident in ids:
        box = slices[int(ident) - 1]
        extents.append(tuple(s.stop - s.start for s in box) if box else (1,) * regions.ndim)
    return [tuple(float(v) for v in c) for c in centroids], extents


def build_queue(
    labels: np.ndarray, result: QualityResult, misses: Misses | None = None
) -> ReviewQueue:
    """The queue of the objects of ``labels`` (quality from ``result``) and of ``misses``.

    Args:
        labels: integer (*S) instance labels.
        result: their quality (:func:`~.quality.object_quality`).
        misses: likely misses on the same grid, or None.
    """
    labels = np.asarray(labels)
    regions = labels.astype(np.int64, copy=False)
    centroids, extents = _places(regions, result.ids)
    items = [
        Item(OBJECT, int(i), float(q), c, e)
        for i, q, c, e in zip(result.ids, result.quality, centroids, extents, strict=True)
    ]
    if misses is not None and len(misses):
        ids = np.arange(1, len(misses) + 1)
        _, miss_extents = _places(misses.labels.astype(np.int64), ids)
        for i, e in zip(ids, miss_extents, strict=True):
            items.append(
                Item(
                    MISS,
                    int(i),
                    float(1.0 - misses.score[i - 1]),
                    tuple(float(v) for v in misses.centroid[i - 1]),
                    e,
                )
            )
    items.sort(key=lambda item: (item.quality, item.kind == MISS, item.ident))
    return ReviewQueue(items)
