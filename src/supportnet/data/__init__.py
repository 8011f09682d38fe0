"""Data sets: registry, on-disk lookup, tensor-resident splits and loaders.

* :mod:`.registry`: :class:`Split`, :class:`DataBundle` and the registered sets (:data:`DATASETS`);
* :mod:`.lookup`: where a set lives (``--data-dir``, ``$SUPPORTNET_DATA``, ``~/.cache/supportnet``,
  ``/usr/share/datasets/<name>``), verification and fetching;
* :mod:`.loading`: :func:`load_data`, the whole set loaded into tensors once;
* :mod:`.batching`: :func:`batches` yields ``(x, y, index)`` as index slices, no per-image Python
  (the airbench habit), in the order :func:`epoch_order` gives.
"""

from .adapters import DatasetSplit, IndexedDataset, from_datasets, with_indices
from .batching import batches, epoch_order, num_batches
from .loading import load_data, normalize
from .lookup import check_dataset, fetch_dataset, find_root, search_dirs, verify_file
from .registry import DATASETS, DataBundle, DatasetSpec, Split, get_spec, list_datasets

__all__ = [
    "DATASETS",
    "DatasetSplit",
    "IndexedDataset",
    "from_datasets",
    "with_indices",
    "DataBundle",
    "DatasetSpec",
    "Split",
    "batches",
    "check_dataset",
    "epoch_order",
    "fetch_dataset",
    "find_root",
    "get_spec",
    "list_datasets",
    "load_data",
    "normalize",
    "num_batches",
    "search_dirs",
    "verify_file",
]
