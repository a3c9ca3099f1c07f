"""The voxel size of a Z-stack: from the file, from the user, or assumed isotropic (and said so).

A Z-stack's planes are usually further apart than its pixels (often 2 to 5 times). The files say
so in their metadata, which :mod:`.io` and :mod:`.lazy` read: ImageJ's ``spacing``, OME's
``PhysicalSizeZ``, OME-Zarr's ``scale``. When the Z step is missing nothing is guessed silently:
:func:`resolve_voxel_size` logs a warning that isotropy is assumed (the CLI prints it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import UserError

logger = logging.getLogger(__name__)

VoxelSize = tuple[float, float, float]

#: The metadata key of a model file that records the pixel (2D: [y, x]) or voxel (3D: [z, y, x])
#: size of its training data, in micrometres.
PIXEL_SIZE_KEY = "pixel_size_um"


@dataclass(frozen=True)
class ResolvedVoxelSize:
    """A voxel size and where it came from.

    Attributes:
        size: (z, y, x) in micrometres, or in pixels when nothing is known (``unit="pixel"``).
        unit: ``"um"`` or ``"pixel"``.
        z_known: False when the Z step was not in the file nor given, and isotropy is assumed.
        note: a sentence for the user when something was assumed, else ``""``.
    """

    size: VoxelSize
    unit: str
    z_known: bool
    note: str = ""

    @property
    def anisotropy(self) -> float:
        """Z step over the (mean) XY pixel size: how many pixels apart two planes are."""
        return self.size[0] / math.sqrt(self.size[1] * self.size[2])


def parse_voxel_size(text: str) -> VoxelSize:
    """``"Z,Y,X"`` in micrometres (e.g. ``"1.0,0.5,0.5"``) -> (z, y, x) floats.

    Raises:
        UserError: not three positive finite numbers separated by commas.
    """
    parts = [p.strip() for p in str(text).replace(";", ",").split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise UserError(
            f"--voxel-size must be three positive numbers Z,Y,X in µm (e.g. 1.0,0.5,0.5), "
            f"got {text!r}"
        )
    return (values[0], values[1], values[2])


def resolve_voxel_size(
    pixel_size: Sequence[float] | None,
    z_spacing: float | None,
    given: Sequence[float] | None = None,
    name: str = "the image",
) -> ResolvedVoxelSize:
    """The voxel size to use for a Z-stack.

    Args:
        pixel_size: (y, x) from the file in µm, or None.
        z_spacing: Z step from the file in µm, or None.
        given: (z, y, x) from the user (``--voxel-size``, a widget); wins over the file.
        name: the image, for the note.

    Returns:
        The size and a note. Without a Z step (neither given nor in the file) the Z step is taken
        equal to the XY pixel (isotropy), and a warning says so.
    """
    if given is not None:
        z, y, x = (float(v) for v in given)
        return ResolvedVoxelSize((z, y, x), "um", True)
    if pixel_size is not None and z_spacing is not None:
        y, x = (float(v) for v in pixel_size)
        return ResolvedVoxelSize((float(z_spacing), y, x), "um", True)
    if pixel_size is None and z_spacing is not None:
        note = (
            f"{name} gives a Z step ({z_spacing:g} µm) but no XY pixel size; its planes "
            "cannot be related to its pixels, so isotropic voxels are assumed. Give "
            "--voxel-size Z,Y,X if that is wrong."
        )
        logger.warning("%s", note)
        return ResolvedVoxelSize((1.0, 1.0, 1.0), "pixel", False, note)
    y, x = (float(v) for v in pixel_size) if pixel_size is not None else (1.0, 1.0)
    unit = "um" if pixel_size is not None else "pixel"
    note = (
        f"{name} does not say how far apart its Z planes are: isotropic voxels are assumed "
        f"(Z step = XY pixel{f' = {y:g} µm' if pixel_size is not None else ''}). Real "
        "Z-stacks are usually coarser in Z; give --voxel-size Z,Y,X."
    )
    logger.warning("%s", note)
    return ResolvedVoxelSize((y, y, x), unit, False, note)
