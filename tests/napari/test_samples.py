"""The sample data: through the manifest in a real viewer, and as layer data."""

import numpy as np
import pytest

from napari_unet._napari.files.sample_data import sample_nuclei, sample_stack


@pytest.mark.parametrize(
    ("key", "shape", "axes"),
    [("nuclei", (512, 512), "YX"), ("nuclei_stack", (5, 256, 256), "TYX")],
)
def test_open_sample_in_viewer(make_napari_viewer, key, shape, axes):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-unet", key)
    image, labels = viewer.layers
    assert image._type_string == "image" and labels._type_string == "labels"
    assert labels.name == f"{image.name} ground truth"
    assert image.data.shape == labels.data.shape == shape
    assert image.data.dtype == np.uint16
    np.testing.assert_allclose(image.scale[-2:], [0.5, 0.5])
    np.testing.assert_allclose(labels.scale, image.scale)
    assert image.scale[0] == 1.0 or len(shape) == 2  # T is not scaled
    # the scale bar reads micrometres where the file gave a pixel size
    assert [str(u) for u in image.units[-2:]] == ["micrometer", "micrometer"]
    assert [str(u) for u in labels.units] == [str(u) for u in image.units]
    assert image.metadata["axes"] == labels.metadata["axes"] == axes
    assert image.metadata["pixel_size"] == pytest.approx((0.5, 0.5))
    assert labels.metadata["source_path"] is None  # never offer to write into the package


@pytest.mark.parametrize("sample", [sample_nuclei, sample_stack])
def test_samples_are_images_with_their_ground_truth(sample):
    (image, image_kwargs, image_kind), (labels, labels_kwargs, labels_kind) = sample()
    assert (image_kind, labels_kind) == ("image", "labels")
    assert labels_kwargs["name"] == f"{image_kwargs['name']} ground truth"
    assert image_kwargs["scale"][-2:] == labels_kwargs["scale"][-2:] == [0.5, 0.5]
    assert not isinstance(image, np.memmap)  # read into memory: packaged files may be temporary
    ids = np.unique(labels)
    assert ids[0] == 0 and len(ids) > 10  # background and many nuclei
    # nuclei are brighter than the background
    assert image[labels > 0].mean() > 2 * image[labels == 0].mean()
