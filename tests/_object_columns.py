"""The first columns of a 2D objects table, shared by the tests of its three writers."""

COLUMNS_2D = [
    "label",
    "area",
    "centroid-0",
    "centroid-1",
    "bbox-0",
    "bbox-1",
    "bbox-2",
    "bbox-3",
    "intensity_mean",
    "quality",
]
