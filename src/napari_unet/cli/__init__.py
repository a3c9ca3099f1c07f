"""The ``napari-unet`` command line: a thin layer over :mod:`napari_unet.core`.

Commands::

    napari-unet predict INPUT... -o OUT [--model NAME|PATH] [--tile-size PX] [--overlap PX]
                        [--batch-size N] [--device auto|cpu|cuda|mps] [--probabilities PATH]
                        [--blockwise] [--block-size PX] [--block-overlap PX] [--bigtiff]
                        [--scheduler ADDRESS]
    napari-unet train --image IMG --labels LAB [--mask MASK] [--image ... --labels ...]
                      [--model BASE|scratch] [--epochs N] [--max-minutes M] -o MODEL.safetensors
    napari-unet evaluate PRED GT [--mask MASK]
    napari-unet models [--json]

``predict`` writes one label TIFF per input. ``-o OUT`` is either an existing folder, where each
input ``NAME.tif`` gives ``NAME_labels.tif``, or, with a single input only, a file name ending in
``.tif`` / ``.tiff``. ``--probabilities`` works the same way (``NAME_probabilities.tif``, float32,
class axis first). Labels keep the input's axes (without its channel axis) and pixel size. An
existing output file is replaced. All outputs and the existence of all inputs are checked before
any work starts; inputs then run one after the other, and a problem with one stops the run (the
outputs of the inputs before it are complete and stay).

Zarr / OME-Zarr inputs, a ``.zarr`` output, images over 64 megapixels and ``--blockwise`` run
block by block into zarr (or a TIFF), on a dask cluster with ``--scheduler``
(``_blockwise``; see docs/large-images.md).

``train`` fine-tunes a model (default: the starter model; ``--model scratch`` trains a new network)
on one or more image/labels pairs: the k-th ``--image`` goes with the k-th ``--labels``, and a
``--mask`` (annotated pixels, non-zero = annotated) belongs to the pair of the ``--image`` or
``--labels`` given just before it. Every file is read and checked before training starts. One line
per epoch goes to stderr; a summary (model file, validation before and after) to stdout. The best
model so far is kept in the output file during training, so Ctrl-C (exit code 130) leaves it.

Exit codes: 0 success; 2 a problem with the input (one line ``napari-unet: error: ...`` on stderr,
no output file written); 1 an unexpected error (short message; the traceback with ``--debug`` or
the environment variable ``NAPARI_UNET_DEBUG=1``); 130 interrupted.

Heavy modules (torch, the engine) are imported inside the commands, so ``--help`` is fast.

Modules: ``_main`` (parser, dispatch, exit codes), ``_common`` (argument types, shared options,
messages, JSON), ``_paths`` (output names and path checks), ``_readers`` (label and mask files),
``_progress`` (progress reporters), ``_blockwise`` (large images, clusters), and one module per
command: ``_predict``, ``_evaluate``, ``_models``, ``_train_options`` and ``_train``.
"""

from napari_unet.cli._main import build_parser, main
from napari_unet.cli._paths import output_paths
from napari_unet.cli._progress import ProgressReporter, TrainReporter
from napari_unet.cli._train_options import TrainingInput, train_config, training_inputs

__all__ = [
    "ProgressReporter",
    "TrainReporter",
    "TrainingInput",
    "build_parser",
    "main",
    "output_paths",
    "train_config",
    "training_inputs",
]
