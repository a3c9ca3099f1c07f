"""Segment runs: start the network (in memory or blockwise) or a re-thresholding in the
background, and put the results into Labels layers.

:class:`SegmentRuns` is a part of :class:`~.widget.SegmentWidget`.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning

from napari_unet.core.axes import Layout
from napari_unet.core.errors import UserError

from ..review import reuse
from . import layers
from .form import NEW_LAYER
from .job import Kept, PlaneLabels, SegmentRequest
from .logic import (
    build_postprocess,
    build_tiling,
    count_text,
    error_message,
    fingerprint,
    plane_region,
    select_plane,
)
from .models import model_tiling
from .stack import stack_settings

if TYPE_CHECKING:
    from ..jobs.workers import Job

logger = logging.getLogger(__name__)


class SegmentRuns:
    """Starting runs and taking their results (a part of :class:`~.widget.SegmentWidget`)."""

    viewer: Any
    job: Job | None
    status: Any
    run_button: Any
    ids: Any
    _plan: layers.RunPlan | None

    def _settings(self, task: str) -> Any:
        return build_postprocess(
            task, self.interior_threshold.value, self.foreground_threshold.value,
            self.min_size.value, self.min_seed_size.value, self.seed_sigma.value,
        )  # fmt: skip

    def _start_segmentation(self, plan: layers.RunPlan) -> Job:
        from ..jobs.workers import start_job
        from .job import segment_job

        choice = plan.choice
        base = model_tiling(choice, self._device_type)
        stack, voxel_size = stack_settings(self._image_layer(), plan.data_axes)
        request = SegmentRequest(
            image=plan.data, axes=plan.data_axes, model_path=choice.path,
            model=self._models.loaded(choice),
            tiling=build_tiling(base, self.tile_size.value, self.batch_size.value),
            postprocess=self._settings(choice.task), precision=self.precision.value,
            stack=stack, voxel_size=voxel_size,
        )  # fmt: skip
        self._plan = plan
        self.status.value = f"Segmenting '{plan.image_name}' with {choice.name}..."
        self.run_button.text = "Cancel"
        self.job = start_job(
            segment_job(request), f"Segmenting {plan.image_name}",
            on_progress=self._on_progress, on_result=self._on_result, on_error=self._on_error,
            on_cancelled=self._on_cancelled, on_finished=self._on_finished,
        )  # fmt: skip
        return self.job

    def _start_blockwise(self) -> Job | None:
        """Segment the selected (large or lazy) image block by block into a new Labels layer
        backed by a zarr array (see :mod:`._segment_blockwise`)."""
        from ..jobs.workers import start_job
        from .blockwise import BlockwiseRequest, BlockwiseRun, blockwise_job

        if self._second_layer() is not None:
            show_warning(
                f"'{self._image_layer().name}' is segmented blockwise (a large or lazy image), "
                "which takes one layer: a second channel needs images that fit in memory."
            )
            return None
        try:
            _, index = self._current_key()
            image, choice, full, axes = self._source()
        except UserError as exc:
            show_warning(str(exc))
            return None
        if self.output.value not in (None, NEW_LAYER):
            show_info(f"'{image.name}' is segmented blockwise, into a new zarr-backed layer.")
        data, data_axes = select_plane(full, axes, index) if index else (full, axes)
        layout = Layout(axes, full.shape)
        run = BlockwiseRun(
            self.viewer, image.name, choice, layers.geometry_of(image, axes, layout.label_axes),
            layout.label_shape,
            plane_region(layout.label_axes, index) if index else None,
        )  # fmt: skip
        request = BlockwiseRequest(
            image=data, axes=data_axes, output=run.output, model_path=choice.path,
            model=self._models.loaded(choice),
            tiling=build_tiling(model_tiling(choice, self._device_type), self.tile_size.value,
                                self.batch_size.value),
            postprocess=self._settings(choice.task), precision=self.precision.value,
            block_size=self.block_size,
        )  # fmt: skip

        def done(result: Any) -> None:
            self._models.remember(choice, result.model)
            self.status.value = run.finish(result)

        self.status.value = f"Segmenting '{image.name}' blockwise with {choice.name}..."
        self.run_button.text = "Cancel"
        self.job = start_job(
            blockwise_job(request), f"Segmenting {image.name} (blockwise)",
            on_progress=run.on_progress, on_result=done,
            on_error=lambda exc: setattr(self.status, "value", run.failed(exc)),
            on_cancelled=lambda: setattr(self.status, "value", run.cancelled()),
            on_finished=self._on_finished,
        )  # fmt: skip
        return self.job

    def _on_progress(self, event: Any) -> None:
        plan = self._plan
        if plan is None or not isinstance(event.payload, PlaneLabels):
            return
        if plan.target_id is None and plan.region is None and len(plan.label_shape) > 2:
            layers.show_plane(self.viewer, plan, event.payload)

    def _on_result(self, result: Any) -> None:
        plan = self._plan
        if plan is None:
            return
        self._models.remember(plan.choice, result.model)
        layer = layers.write_result(self.viewer, plan, result.labels)
        kept = Kept(result.probabilities, result.model.task, layer.unique_id, plan.region,
                    result.model.name, plan.label_shape, result.stack,
                    result.voxel_size)  # fmt: skip
        self._kept.put(plan.key, kept)
        reuse.offer(plan.key, kept)  # Review ranks from them without running the network
        count = count_text(result.labels, result.model.task)
        count += " (3D)" if result.stack != "planes" else ""
        self.status.value = f"{count} in '{layer.name}' ({result.seconds:.1f} s)."

    def _on_error(self, exc: BaseException) -> None:
        layers.remove_live(self.viewer, self._plan)
        report(exc, "Segmentation")
        self.status.value = "Failed; no labels were changed."

    def _on_cancelled(self) -> None:
        layers.remove_live(self.viewer, self._plan)
        show_info("Segmentation cancelled; no labels were changed.")
        self.status.value = "Cancelled."

    def _on_finished(self) -> None:
        self.job = None
        self._plan = None
        self.run_button.text = "Run"

    # --- re-thresholding ---------------------------------------------------------------------

    def _start_rethreshold(self, key: Hashable, kept: Kept, target: Any) -> Job:
        from ..jobs.workers import start_job
        from .job import rethreshold_job

        start = fingerprint(target.data) if target is not None else None

        def write(labels: np.ndarray) -> None:
            image = layers.find_layer(self.viewer, key[0])
            layout = self._layout_of(image)
            geometry = layers.geometry_of(image, layout.axes, layout.label_axes) if layout else None
            layer = layers.write_rethresholded(self.viewer, kept, image, geometry, start, labels,
                                               self.ids.value == "per-frame")  # fmt: skip
            if layer is not None:
                count = count_text(labels, kept.task)
                self.status.value = f"{count} in '{layer.name}' (thresholds applied)."

        self.status.value = "Applying thresholds..."
        self.run_button.text = "Cancel"
        job = rethreshold_job(kept.probabilities, kept.task, self._settings(kept.task),
                              kept.stack, kept.voxel_size)  # fmt: skip
        self.job = start_job(
            job, "Applying thresholds", on_result=write,
            on_error=lambda exc: report(exc, "Applying thresholds"),
            on_cancelled=lambda: show_info("Applying thresholds cancelled; nothing was changed."),
            on_finished=self._on_finished,
        )  # fmt: skip
        return self.job


def report(exc: BaseException, what: str) -> None:
    """Tell the user that a job failed; log the traceback of anything but a user error."""
    if not isinstance(exc, UserError):
        logger.error("%s failed", what, exc_info=exc)
    show_error(error_message(exc, what))
