"""A trial's data set as MLflow dataset inputs: the runs table's Dataset column, per split.

Each split (train, validation, test) is one `DatasetInput` named after the data set, with its own
digest and the MLflow context "training", "validation" or "testing", so the UI shows which images
a trial trained on, chose its checkpoint on and was scored on. The profile (MLflow's NumPy dataset
profile) holds the split's shape, hence its size. The source is the code that built the splits
(MLflow's "code" source type, tagged with the loader and its arguments): the images are not
copied anywhere.

Each split's digest is `smaraad.data.split_digest` (SHA-256 of its images and labels).
"""

from __future__ import annotations

from mlflow.data import from_numpy
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.entities import Dataset, DatasetInput, InputTag
from torch import Tensor

from smaraad.data import split_digest

CONTEXT_TAG = "mlflow.data.context"  # the tag MLflow's UI reads the context from
SPLIT_CONTEXTS = (("train", "training"), ("val", "validation"), ("test", "testing"))


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
