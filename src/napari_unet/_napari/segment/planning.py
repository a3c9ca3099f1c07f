"""What a Segment run works on, read from the widget's controls and the viewer: the image layer
(and its second channel), the model, the plane or stack, the layer the labels go to.

:class:`SegmentPlanning` is a part of :class:`~.widget.SegmentWidget`; it holds no state of its
own.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from napari.layers import Image

from napari_unet.core.axes import Layout
from napari_unet.core.errors import UserError

from ..files.channels import channels_name, stack_channels
from ..files.layer_info import as_labels_layer, layer_layout
from . import layers
from .form import NEW_LAYER, NO_SECOND, THIS_PLANE
from .logic import (
    channel_problem,
    fingerprint,
    full_resolution,
    plane_region,
    select_plane,
    written_by_us,
)
from .models import ModelChoice

if TYPE_CHECKING:
    import napari


class SegmentPlanning:
    """The Segment widget's reading of its inputs (a part of :class:`~.widget.SegmentWidget`)."""

    viewer: napari.viewer.Viewer
    image: Any
    second: Any
    model: Any
    output: Any
    scope: Any
    ids: Any
    confirm: Callable[[str], bool]

    def _image_layer(self) -> Any:
        layer = layers.find_layer(self.viewer, self.image.value)
        return layer if isinstance(layer, Image) else None

    def _second_layer(self) -> Any:
        """The Image layer chosen as the second channel, or ``None``."""
        if self.second.value in (None, NO_SECOND):
            return None
        layer = layers.find_layer(self.viewer, self.second.value)
        return layer if isinstance(layer, Image) else None

    def _layout_of(self, image: Any) -> Layout | None:
        if image is None:
            return None
        try:
            return layer_layout(image)
        except UserError:
            return None

    def _axes_of(self, image: Any) -> str | None:
        layout = self._layout_of(image)
        return layout.axes if layout is not None else None

    def _blockwise(self) -> bool:
        """Whether the selected image is segmented blockwise (a large or lazy image)."""
        from .blockwise import needs_blockwise

        image = self._image_layer()
        layout = self._layout_of(image)
        if layout is None:
            return False
        return needs_blockwise(full_resolution(image), layout.label_shape)

    def _model_choice(self) -> ModelChoice:
        choice = self.model.value
        if not isinstance(choice, ModelChoice):
            raise UserError("Choose a model first.")
        if choice.error:
            raise UserError(choice.error)
        return choice

    def _current_key(self) -> tuple[Hashable, dict[str, int] | None]:
        """The key of kept probabilities for the current image (and second channel), model and
        plane or stack, and the plane's index (``None`` for the whole stack)."""
        image = self._image_layer()
        if image is None:
            raise UserError("Choose an image layer first (open an image, or File > Open Sample).")
        choice = self._model_choice()
        data = full_resolution(image)
        layout = layer_layout(image)
        index = None
        if self.scope.value == THIS_PLANE and layout.leading_axes:
            position = image.world_to_data(self.viewer.dims.point)
            at = layout.leading_at(position, clip=True) or ()
            index = dict(zip(layout.leading_axes, at, strict=True))
        scope = ("plane", tuple(sorted(index.items()))) if index else ("stack",)
        second = self._second_layer()
        channels = (second.unique_id, id(full_resolution(second))) if second is not None else ()
        return (image.unique_id, id(data), choice.key(), scope, channels), index

    def _source(self) -> tuple[Any, ModelChoice, Any, str]:
        """The image layer, the model, the model input's full-resolution data and its axes: the
        image's own, or the image and its second channel stacked as ``C`` (``"CYX"``, ...).

        Raises:
            UserError: the model does not take the input's channels, or the second channel does
                not fit the image.
        """
        image, choice = self._image_layer(), self._model_choice()
        second = self._second_layer()
        if second is None:
            full = full_resolution(image)
            axes = layer_layout(image).axes
            name = image.name
        else:
            full, axes = stack_channels([image, second])
            name = channels_name([image, second])
        problem = channel_problem(axes, full.shape, choice.in_channels, name, choice.name)
        if problem and second is None and (choice.in_channels or 1) > 1:
            problem += " A model of several channels takes single-channel layers: choose the "
            problem += "second one under 'Second channel'."
        if problem:
            raise UserError(problem)
        return image, choice, full, axes

    def _make_plan(self) -> layers.RunPlan | None:
        """What to run, or ``None`` when the user declined to replace an edited layer."""
        key, index = self._current_key()
        image, choice, full, axes = self._source()
        data, data_axes = select_plane(full, axes, index) if index else (full, axes)
        layout = Layout(axes, full.shape)
        shape = layout.label_shape
        target = self._target(shape, bool(index))
        if target is False:
            return None
        return layers.RunPlan(
            image_id=image.unique_id, image_name=image.name, data=data,
            data_axes=data_axes, label_shape=shape,
            region=plane_region(layout.label_axes, index) if index else None,
            geometry=layers.geometry_of(image, self._axes_of(image) or "", layout.label_axes),
            target_id=target.unique_id if target is not None else None,
            target_fingerprint=fingerprint(target.data) if target is not None else None,
            key=key, choice=choice, per_frame=self.ids.value == "per-frame",
        )  # fmt: skip

    def _target(self, shape: tuple[int, ...], plane: bool) -> Any:
        """The Labels layer to write into: ``None`` for a new layer, ``False`` when the user
        does not want an edited layer replaced."""
        value = self.output.value
        if value in (None, NEW_LAYER):
            return None
        layer = layers.find_layer(self.viewer, value)
        if layer is None:
            raise UserError("The output layer no longer exists; choose another output.")
        if isinstance(layer, Image):  # offered because it holds integer labels
            layer = as_labels_layer(self.viewer, layer)
        if tuple(layer.data.shape) != shape:
            raise UserError(f"'{layer.name}' has shape {layer.data.shape}; labels need {shape}.")
        if not written_by_us(layer.metadata, layer.data):
            what = "this plane of " if plane else ""
            question = (
                f"'{layer.name}' holds labels that Segment did not write (edits). Replace "
                f"{what}'{layer.name}' with the new result? Those labels will be lost."
            )
            if not self.confirm(question):
                return False
        return layer
