"""The controls of the Fine-tune widget: the (image, labels) pairs and the training settings.

:class:`FinetuneForm` lays the controls out and reads them (:meth:`FinetuneForm.train_config`);
what they do is in :class:`._finetune.FinetuneWidget`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
    RadioButtons,
    SpinBox,
)
from napari.layers import Image, Labels, Shapes

from .job import AUGMENT_LEVELS, augment_config
from .plot import TrainingPlot
from .training_data import ANNOTATED_RULES, REVIEWED, SHAPES, matching_labels

if TYPE_CHECKING:
    import napari

    from napari_unet.core.training.settings import TrainConfig

#: Epoch limit when the budget is given in minutes (the time ends training first).
MINUTES_EPOCHS = 100_000
DEVICES = ("auto", "cpu", "cuda", "mps")


class PairRow(Container):
    """One (image layer, labels layer) pair of the list, one control per row: the image with a
    button removing the pair, its labels, and the image's second channel ("none" by default) for
    a two-channel model."""

    def __init__(self, owner: FinetuneForm) -> None:
        self.image = ComboBox(
            choices=owner._layer_choices(Image), nullable=True, tooltip="The image"
        )
        self.labels_layer = ComboBox(
            choices=owner._layer_choices(Labels),
            nullable=True,
            tooltip="Its corrected labels (same shape, no channels)",
        )
        self.remove_button = PushButton(text="x", tooltip="Remove this pair")
        self.remove_button.max_width = 22
        self.second = ComboBox(
            label="channel 2",
            choices=owner._layer_choices(Image),
            nullable=True,
            tooltip="For a two-channel model (e.g. nucleus + cytoplasm): the image layer of the "
            "image's second channel, of its shape; empty (-----): the image alone",
        )
        # one control per row, so that the pair fits a dock of a laptop screen
        image_row = Container(
            widgets=[self.image, self.remove_button], layout="horizontal", labels=False,
            label="image",
        )  # fmt: skip
        image_row.margins = (0, 0, 0, 0)
        self.labels_layer.label = "labels"
        super().__init__(widgets=[image_row, self.labels_layer, self.second], labels=True)
        self.margins = (0, 0, 0, 0)
        self._unify_label_widths()  # magicgui aligns the rows only once initialised
        self.image.changed.connect(self.pick_labels)
        self.remove_button.changed.connect(lambda: owner.remove_pair(self))

    @property
    def pair(self) -> tuple[Any, Any]:
        """``(image layer, labels layer)``, either ``None`` when not chosen."""
        return self.image.value, self.labels_layer.value

    def pick_labels(self) -> None:
        """Choose a labels layer with the image's shape if the current one does not fit."""
        image, current = self.pair
        if image is None:
            return
        candidates = [c for c in self.labels_layer.choices if c is not None]
        if current is not None and matching_labels(image, [current]) is current:
            return
        found = matching_labels(image, candidates)
        if found is not None:
            self.labels_layer.value = found


class FinetuneForm(Container):
    """The Fine-tune widget's controls, bound to ``viewer``'s layers (the buttons' actions are
    connected by the widget)."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self._models: list[tuple[str, str]] = []
        self._build()

    def _build(self) -> None:
        self.pair_rows = Container(labels=False, label="")
        self.pair_rows.margins = (0, 0, 0, 0)
        self.add_pair_button = PushButton(text="Add pair")
        self.rule = ComboBox(
            label="annotated",
            choices=ANNOTATED_RULES,
            value=REVIEWED,
            tooltip="What training learns from: the objects you corrected, "
            "deleted or accepted (with a margin, plus the regions of a Shapes "
            "layer if you choose one), everything, only the regions drawn in a "
            "Shapes layer, or the planes of a stack that have labels",
        )
        self.shapes_layer = ComboBox(
            label="regions",
            choices=self._layer_choices(Shapes),
            nullable=True,
            tooltip="Regions you reviewed completely",
        )
        self.annotated_info = Label(value="")
        self.annotated_info.native.setWordWrap(True)
        self.base_model = ComboBox(label="base model", choices=lambda _: self._models)
        self.model_name = LineEdit(
            label="save as", tooltip="Name of the new model (saved in your model folder)"
        )
        self._build_settings()
        self.train_button = PushButton(text="Train")
        self.stop_button = PushButton(
            text="Stop", enabled=False, tooltip="Stop training; the best model so far is kept"
        )
        self.status = Label(value="")
        self.status.native.setWordWrap(True)  # a long message must not widen the dock
        self.plot = TrainingPlot()
        self.apply_target = ComboBox(
            label="apply to", choices=self._layer_choices(Image), nullable=True
        )
        self.apply_button = PushButton(text="Apply to image", enabled=False)
        buttons = Container(
            widgets=[self.train_button, self.stop_button], layout="horizontal", labels=False
        )
        self.extend(
            [
                self.pair_rows,
                self.add_pair_button,
                self.rule,
                self.shapes_layer,
                self.annotated_info,
                self.base_model,
                self.model_name,
                self.budget,
                self.epochs,
                self.minutes,
                self.augmentation,
                self.elastic,
                self.preview_button,
                self.advanced,
                self.advanced_box,
                buttons,
                self.status,
                self.apply_target,
                self.apply_button,
            ]
        )
        # a plain Qt widget: one layout item per magicgui widget comes before it
        self.native.layout().insertWidget(list(self).index(self.status) + 1, self.plot)
        self.add_pair_button.changed.connect(self.add_pair)
        self.rule.changed.connect(self._rule_changed)
        self.budget.changed.connect(self._budget_changed)
        self.advanced.changed.connect(lambda on: setattr(self.advanced_box, "visible", on))

    def _build_settings(self) -> None:
        """The training settings: budget, augmentation and the advanced settings."""
        self.budget = RadioButtons(
            label="budget", choices=("epochs", "minutes"), value="epochs", orientation="horizontal"
        )
        self.epochs = SpinBox(label="epochs", value=40, min=1, max=MINUTES_EPOCHS)
        self.minutes = FloatSpinBox(
            label="minutes", value=10.0, min=0.1, max=10_000.0, step=1.0, visible=False
        )
        self.augmentation = ComboBox(label="augmentation", choices=AUGMENT_LEVELS, value="default")
        self.elastic = CheckBox(text="elastic deformation", value=True)
        self.preview_button = PushButton(text="Preview augmentation")
        self.advanced = CheckBox(text="advanced settings", value=False)
        self.patch_size = SpinBox(label="patch size", value=192, min=32, max=1024, step=16)
        self.batch_size = SpinBox(label="batch size", value=4, min=1, max=64)
        self.steps_per_epoch = SpinBox(label="steps per epoch", value=25, min=1, max=100_000)
        self.device = ComboBox(label="device", choices=DEVICES, value="auto")
        self.advanced_box = Container(
            widgets=[self.patch_size, self.batch_size, self.steps_per_epoch, self.device],
            visible=False,
        )

    def _layer_choices(self, kind: type) -> Any:
        def choices(_: Any) -> list[tuple[str, Any]]:
            return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, kind)]

        return choices

    def _rule_changed(self, rule: str) -> None:
        self.shapes_layer.visible = rule in (SHAPES, REVIEWED)

    def _budget_changed(self, kind: str) -> None:
        self.epochs.visible = kind == "epochs"
        self.minutes.visible = kind == "minutes"

    # ------------------------------------------------------------------------------ pairs

    def add_pair(self) -> PairRow:
        """Add a pair row: the selected image (else the last one not yet listed) and a labels
        layer of its shape."""
        row = PairRow(self)
        listed = {id(r.image.value) for r in self.pair_rows}
        images = [c for c in row.image.choices if c is not None]
        active = self._viewer.layers.selection.active
        if isinstance(active, Image) and id(active) not in listed:
            row.image.value = active
        else:
            fresh = [c for c in images if id(c) not in listed]
            if fresh:
                row.image.value = fresh[-1]
        row.pick_labels()
        self.pair_rows.append(row)
        return row

    def remove_pair(self, row: PairRow) -> None:
        """Remove a pair row."""
        if row in list(self.pair_rows):
            self.pair_rows.remove(row)

    @property
    def pairs(self) -> list[tuple[Any, Any]]:
        """The listed ``(image layer, labels layer)`` pairs."""
        return [row.pair for row in self.pair_rows]

    @property
    def second_channels(self) -> list[Any]:
        """The second-channel layer of each listed pair (``None``: the image alone)."""
        return [row.second.value for row in self.pair_rows]

    # ------------------------------------------------------------------------------ settings

    def train_config(self) -> TrainConfig:
        """The :class:`~napari_unet.core.training.train.TrainConfig` of the current settings."""
        from napari_unet.core.training.settings import TrainConfig

        by_time = self.budget.value == "minutes"
        return TrainConfig(
            epochs=MINUTES_EPOCHS if by_time else int(self.epochs.value),
            max_minutes=float(self.minutes.value) if by_time else None,
            steps_per_epoch=int(self.steps_per_epoch.value),
            batch_size=int(self.batch_size.value),
            patch_size=int(self.patch_size.value),
            augment=augment_config(self.augmentation.value, bool(self.elastic.value)),
        )
