"""The review queue's moves: worst first, reviewed items and painted-over objects skipped."""

from napari_unet.core.analysis.review import MISS, OBJECT, Item, ReviewQueue


def _queue() -> ReviewQueue:
    items = [
        Item(OBJECT, 4, 0.1, (5.0, 5.0), (3, 3)),
        Item(MISS, 1, 0.2, (9.0, 9.0), (2, 2)),
        Item(OBJECT, 7, 0.3, (1.0, 1.0), (3, 3)),
        Item(OBJECT, 2, 0.9, (3.0, 3.0), (3, 3)),
    ]
    return ReviewQueue(items)


def test_next_skips_painted_objects_and_counts_them():
    queue = _queue()
    assert queue.next(edited={7, 1}).ident == 4  # a miss numbered 1 is not object 1
    queue.mark("accepted")
    assert (queue.next(edited={7, 1}).kind, queue.current.ident) == (MISS, 1)
    queue.mark("seen")
    assert queue.next(edited={7, 1}).ident == 2
    queue.mark("deleted")
    assert queue.next(edited={7, 1}) is None
    counts = queue.counts()
    assert (counts["reviewed"], counts["edited"], counts["remaining"]) == (4, 1, 0)


def test_next_without_edits_visits_every_item_in_order():
    queue = _queue()
    assert [queue.next().ident for _ in range(5)] == [4, 1, 7, 2, 4]
