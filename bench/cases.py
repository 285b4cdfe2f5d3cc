"""Case preparation of one run: its cases loaded onto the protocol grid and checked before any
training starts, so that bad data fails in seconds, not after hours."""

from __future__ import annotations

import numpy as np

from bench.core.errors import UserError
from bench.core.protocol import Protocol
from datasets.base import Dataset
from datasets.splits import Split


def checked_label(ds: Dataset, case_id: str) -> np.ndarray:
    """The stored label map (D, H, W) of ``case_id``.

    Raises:
        UserError: a value outside the dataset's classes 0..C-1.
    """
    lab = np.asarray(ds.load_label(case_id))
    hi = int(lab.max()) if lab.size else 0
    if hi >= ds.num_classes or (lab.dtype.kind == "i" and int(lab.min()) < 0):
        raise UserError(
            f"label of case '{case_id}' holds value {hi} but dataset '{ds.name}' has classes 0..{ds.num_classes - 1}; "
            f"fix the label file or the dataset's label list"
        )
    return lab


class RunCases:
    """The cases of one run, on the protocol grid, checked.

    Owns what the training and validation read: ``labeled`` [(image, label)] (images (D, H, W)
    float32, labels (D, H, W)), ``unlabeled`` [image] (their labels are never read), the eval
    cases' labels ``eval_labels`` {case: label}, and the labeled voxel count per class
    ``counts`` (C,). Test images and labels are checked here and read again by the test.

    Args:
        dataset, protocol, split: the run's.
        method_cls: the method (its ``label_policy`` and ``uses_unlabeled`` pick the cases).

    Raises:
        UserError: an image with NaN or infinite values, a label outside the classes.
    """

    def __init__(self, dataset: Dataset, protocol: Protocol, split: Split, method_cls: type):
        self.dataset, self.protocol = dataset, protocol
        labeled_ids = split.train if method_cls.label_policy == "all" else split.labeled
        unlabeled_ids = split.unlabeled if (method_cls.uses_unlabeled and method_cls.label_policy != "all") else []
        self.labeled = [(self.image(c), self.label(c)) for c in labeled_ids]
        self.unlabeled = [self.image(c) for c in unlabeled_ids]
        for cid in split.eval + split.test:  # fail now, not after hours of training
            if not np.isfinite(np.asarray(dataset.load_image(cid))).all():
                raise UserError(f"image of case '{cid}' of dataset '{dataset.name}' contains NaN or infinite values; fix or re-export it")
        # labels checked once here; validation reuses the eval ones on the protocol grid
        self.eval_labels = {cid: self.label(cid) for cid in split.eval}
        for cid in split.test:
            checked_label(dataset, cid)
        self.counts = np.zeros(dataset.num_classes, dtype=np.int64)
        for _, lab in self.labeled:
            self.counts += np.bincount(lab.ravel(), minlength=dataset.num_classes)[: dataset.num_classes]

    def image(self, case_id: str) -> np.ndarray:
        """Normalised image on the protocol grid (D, H, W) float32."""
        return self.protocol.prepare_image(self.dataset.load_image(case_id), f"image of case '{case_id}'")

    def label(self, case_id: str) -> np.ndarray:
        """Checked label map on the protocol grid (D, H, W)."""
        return self.protocol.prepare_label(checked_label(self.dataset, case_id))

    def voxel_share(self, organs) -> dict[str, float]:
        """Per organ, its share of the labeled foreground voxels."""
        fg = np.asarray(self.counts, dtype=np.float64)[1:]
        total = max(float(fg.sum()), 1.0)
        return {o: float(v / total) for o, v in zip(organs, fg)}
