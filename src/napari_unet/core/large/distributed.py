"""Running blocks, or the files of a batch, on a dask.distributed cluster.

Without a cluster nothing here is used: blockwise prediction runs its blocks one after the other
in the calling process, and ``distributed`` need not be installed (it comes with the
``distributed`` extra: ``pip install "napari-unet[distributed]"``).

A cluster is reached through a :class:`distributed.Client`: :func:`connect` makes one from a
scheduler address (``tcp://host:8786``), or from dask's own configuration (the
``scheduler-address`` setting, e.g. the ``DASK_SCHEDULER_ADDRESS`` environment variable). Any
cluster dask can start works the same way: a ``LocalCluster`` on one machine, a
``dask_jobqueue.SLURMCluster`` on an HPC system (see docs/large-images.md).

The run's :class:`~napari_unet.core.inference.engine.InferenceEngine` is sent to every worker
once (``scatter``), and each worker builds its predictor once, when it receives it. Each task
gets small arguments (a block, zarr arrays on a file system the workers share, the image's path)
and returns a small result.
Tasks are submitted all at once and their results taken as they finish; closing the generator
cancels the tasks not yet run. A worker runs as many blocks at once as it has threads, each with
torch's threads as the worker process has them (dask starts workers with ``OMP_NUM_THREADS=1``:
one torch thread per block, so a worker's threads never compete for its cores).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError

if TYPE_CHECKING:
    from ..inference.engine import InferenceEngine

logger = logging.getLogger(__name__)


def _require_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise UserError(
            "Running on a dask cluster needs the 'distributed' package: "
            "pip install 'napari-unet[distributed]'."
        ) from exc
    return distributed


def configured_address() -> str | None:
    """The scheduler address from dask's configuration (``scheduler-address``), or None."""
    import dask

    address = dask.config.get("scheduler-address", None) or dask.config.get(
        "scheduler_address", None
    )
    return str(address) if address else None


def connect(address: str | None = None, timeout: float = 30.0) -> Any:
    """A :class:`distributed.Client` for the scheduler at ``address`` (else the one dask's
    configuration names), or None when neither is given: then everything runs locally.

    Raises:
        UserError: ``distributed`` is not installed, or the scheduler cannot be reached.
    """
    address = address or configured_address()
    if not address:
        return None
    distributed = _require_distributed()
    try:
        client = distributed.Client(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as exc:
        raise UserError(f"Cannot reach the dask scheduler at {address}: {exc}") from exc
    logger.info("connected to the dask scheduler at %s (%s)", address, _workers(client))
    return client


def _workers(client: Any) -> str:
    try:
        info = client.scheduler_info()["workers"]
    except (KeyError, OSError, TimeoutError):
        return "workers unknown"
    threads = sum(w.get("nthreads", 0) for w in info.values())
    return f"{len(info)} workers, {threads} threads"


def run_on_cluster(
    client: Any,
    fn: Callable[..., Any],
    items: Sequence[Any],
    *shared: Any,
    broadcast: Sequence[Any] = (),
) -> Generator[tuple[Any, Any], None, None]:
    """Run ``fn(item, *broadcast, *shared)`` for every item on the cluster; yield
    ``(item, result)`` as tasks finish.

    Args:
        client: a :class:`distributed.Client`.
        fn: a module-level function (workers import it by name).
        items: one task per item.
        shared: small arguments sent with every task.
        broadcast: large arguments (a model) sent once to every worker.

    Raises:
        The first task's exception (e.g. a :class:`~.errors.UserError` about the input); the
        other tasks are cancelled.
    """
    distributed = _require_distributed()
    scattered = [client.scatter(value, broadcast=True, hash=False) for value in broadcast]
    futures = {client.submit(fn, item, *scattered, *shared, pure=False): item for item in items}
    try:
        for future, result in distributed.as_completed(futures, with_results=True):
            yield futures[future], result
    finally:
        client.cancel(list(futures))
        for value in scattered:
            client.cancel(value)


# --------------------------------------------------------------------------------------------
# the files of a batch


@dataclass(frozen=True)
class FileJob:
    """One file of a batch: the image, where its labels (and probabilities) go."""

    source: Path
    target: Path
    probabilities: Path | None = None


def predict_file(job: FileJob, engine: InferenceEngine, postprocess: Any) -> int | None:
    """Read, predict, post-process and write one file in memory (what a worker runs).

    Returns:
        The number of objects (instance models), else None.
    """
    from ..axes import Layout
    from ..inference.postprocess import labels_from_probabilities
    from ..io import reading, writing
    from ..progress import drain

    image = reading.read_image(job.source)
    probs = drain(engine.predict_image(image.data, image.axes))
    labels = labels_from_probabilities(probs, engine.task, postprocess)
    axes = Layout(image.axes, image.shape).label_axes
    if job.probabilities is not None:
        writing.write_probabilities(
            job.probabilities, probs, "C" + axes, image.pixel_size, image.z_spacing
        )
    writing.write_labels(job.target, labels, axes, image.pixel_size, image.z_spacing)
    semantic = engine.task == "semantic" or (
        postprocess is not None and postprocess.mode == "semantic"
    )
    return None if semantic or not labels.size else int(labels.max())


def predict_files(
    client: Any,
    jobs: Sequence[FileJob],
    model: Any,
    tiling: Any = None,
    device: str = "auto",
    precision: str = "auto",
    postprocess: Any = None,
) -> Generator[tuple[FileJob, int | None], None, None]:
    """Predict every file of ``jobs`` on the cluster, one task per file; yield
    ``(job, number of objects)`` as files are done.

    Every worker must see the files at the same paths (a shared file system). One
    :class:`~napari_unet.core.inference.engine.InferenceEngine` (``model``, ``tiling``,
    ``device``, ``precision``) runs every file; each worker builds its predictor once.
    """
    from ..inference.engine import InferenceEngine

    engine = InferenceEngine(model, tiling, device, precision)
    yield from run_on_cluster(client, predict_file, list(jobs), postprocess, broadcast=[engine])
