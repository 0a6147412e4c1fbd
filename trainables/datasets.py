"""A trial's data set as MLflow dataset inputs: the runs table's Dataset column, per split.

Each split (train, validation, test) is one `DatasetInput` named after the data set, with its own
digest and the MLflow context "training", "validation" or "testing", so the UI shows which images
a trial trained on, chose its checkpoint on and was scored on. The profile (MLflow's NumPy dataset
profile) holds the split's shape, hence its size. The source is the code that built the splits
(MLflow's "code" source type, tagged with the loader and its arguments): the images are not
copied anywhere.

Digest (decision): the first 16 hex digits of SHA-256 over the split's uint8 images and int64
labels, shape included. MLflow's own NumPy digest hashes only the first 10,000 elements of the
flattened array (the first few images), so two subsets of one data set could share it.
"""

from __future__ import annotations

import hashlib

import numpy as np
from mlflow.data import from_numpy
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.entities import Dataset, DatasetInput, InputTag
from torch import Tensor

CONTEXT_TAG = "mlflow.data.context"  # the tag MLflow's UI reads the context from
SPLIT_CONTEXTS = (("train", "training"), ("val", "validation"), ("test", "testing"))
DIGEST_CHARS = 16


def split_digest(images: Tensor, labels: Tensor) -> str:
    """SHA-256 of a split's images and labels (contents and shapes), first DIGEST_CHARS digits."""
    h = hashlib.sha256()
    for t in (images, labels):
        array = np.ascontiguousarray(t.cpu().numpy())
        h.update(repr((array.dtype.str, array.shape)).encode())
        h.update(array.data)
    return h.hexdigest()[:DIGEST_CHARS]


def dataset_inputs(splits: dict[str, tuple[Tensor, Tensor]], name: str,
                   source_tags: dict[str, str] | None = None) -> list[DatasetInput]:
    """One DatasetInput per split of `splits` (keys train, val, test: (images, labels)), named
    `name`. `source_tags` describe how the splits were made (loader, root, seeds)."""
    source = CodeDatasetSource(tags={"loader": "smaraad.data.load_data", "dataset": name,
                                     **(source_tags or {})})
    inputs = []
    for split, context in SPLIT_CONTEXTS:
        images, labels = splits[split]
        fields = from_numpy(images.cpu().numpy(), source=source, targets=labels.cpu().numpy(),
                            name=name, digest=split_digest(images, labels)).to_dict()
        inputs.append(DatasetInput(Dataset(**fields),
                                   tags=[InputTag(CONTEXT_TAG, context),
                                         InputTag("smaraad.split", split),
                                         InputTag("smaraad.split_size", str(len(labels)))]))
    return inputs
