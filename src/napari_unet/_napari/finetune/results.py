"""After a Fine-tune run, and before one: publish the new model (base model list, Segment
widget), apply it to an image, and preview the augmentation.

:class:`FinetuneResults` is a part of :class:`~.widget.FinetuneWidget`.
"""

from __future__ import annotations

import logging
from typing import Any

from napari.utils.notifications import show_error, show_warning

from napari_unet.core.errors import UserError

from .job import augment_config
from .training_data import collect_inputs

logger = logging.getLogger(__name__)


class FinetuneResults:
    """Publishing, applying and previewing (a part of :class:`~.widget.FinetuneWidget`)."""

    _viewer: Any
    trained_model: str | None

    def _segment_widget(self) -> Any:
        """The Segment widget (opened if needed), or ``None`` with a warning."""
        try:
            _, widget = self._viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
        except Exception as exc:  # any failure to open it must not break the viewer
            logger.warning("cannot open the Segment widget: %s", exc)
            show_warning(f"The Segment widget cannot be opened ({exc}).")
            return None
        return widget

    def _publish(self, name: str, better: bool) -> None:
        """Make the new model known: base model list, Apply button and, when it beat its base,
        the Segment widget and the base of the next round."""
        self.trained_model = name
        self.apply_button.enabled = True
        self.exporter.set_model(self._run_output)
        self.refresh_models(select=name if better else None)
        segment = self._segment_widget()
        if segment is not None:
            segment.refresh_models(select=name if better else None)

    def apply_to_image(self) -> None:
        """Segment the chosen image with the model trained last (through the Segment widget)."""
        if self.trained_model is None:
            show_warning("Train a model first.")
            return
        layer = self.apply_target.value
        if layer is None:
            layer = next((image for image, _ in self.pairs if image is not None), None)
        if layer is None:
            show_error("Choose the image to segment.")
            return
        segment = self._segment_widget()
        if segment is None:
            return
        second = next((s for (image, _), s in zip(self.pairs, self.second_channels, strict=True)
                       if image is layer), None)  # fmt: skip
        try:
            segment.refresh_models(select=self.trained_model)
            segment.select_image(layer, second)
            segment.run()
        except UserError as exc:
            show_error(str(exc))
        except Exception as exc:  # an unexpected failure is reported, never raised into Qt
            logger.exception("cannot apply the model")
            show_error(f"Cannot apply the model: {exc}")

    def preview_augmentation(self) -> list:
        """Add augmented samples of a patch of the first pair as layers (returns them)."""
        from .job import preview_samples
        from .training_data import shown_plane_number

        try:
            listed = zip(self.pairs, self.second_channels, strict=True)
            pair, second = next(((p, s) for p, s in listed if None not in p), (None, None))
            if pair is None:
                raise UserError("Choose an image and its labels first.")
            inputs, _ = collect_inputs([pair], self.rule.value, self.shapes_layer.value, [second])
            plane = shown_plane_number(pair[0], self._viewer.dims.point)
            images, labels = preview_samples(
                inputs[0],
                self._in_channels(inputs[0]),
                augment_config(self.augmentation.value, bool(self.elastic.value)),
                plane=plane,
                patch_size=int(self.patch_size.value),
            )
        except UserError as exc:
            show_error(str(exc))
            return []
        except Exception as exc:  # an unexpected failure is reported, never raised into Qt
            logger.exception("cannot preview the augmentation")
            show_error(f"Cannot preview the augmentation: {exc}")
            return []
        return self._show_preview(pair[0], images, labels)

    def _in_channels(self, item: Any) -> int:
        from napari_unet.core.network.weights import read_metadata

        from .job import scratch_channels

        base = self._base_path()
        if base is None:
            return scratch_channels(item)
        return int(read_metadata(base).get("in_channels", 1))

    def _show_preview(self, image_layer: Any, images: Any, labels: Any) -> list:
        for layer in [la for la in self._viewer.layers if la.metadata.get("augmentation_preview")]:
            self._viewer.layers.remove(layer)
        scale = tuple(image_layer.scale[-2:])
        extent = image_layer.extent.world
        translate = (float(extent[0][-2]), float(extent[1][-1]) + 10 * scale[-1])
        common = {
            "scale": scale,
            "translate": translate,
            "metadata": {"augmentation_preview": True},
        }
        units = getattr(image_layer, "units", None)
        if units is not None:  # in the image's units (e.g. µm), as it is shown
            common["units"] = tuple(units[-2:])
        name = f"augmentation preview ({self.augmentation.value})"
        if images.shape[0] == 1:
            added = [self._viewer.add_image(images[0], name=name, **common)]
        else:
            added = list(self._viewer.add_image(images, channel_axis=0, name=name, **common))
        added.append(self._viewer.add_labels(labels, name=f"{name} labels", opacity=0.4, **common))
        return added
