"""Real labelled images that installed packages ship, as an evaluation view: transfer probes without a download.

    view = RealImageView("digits", Preprocessing(64))       # scikit-learn's 1,797 handwritten digits
    for batch in view.batches("all", budget=2000): ...

An encoder trained on the embedded scenes is judged on images it never saw, from another source. Each set here
is read from files inside an installed wheel (nothing is fetched at run time); `REAL_SETS` names them with their
origin and licence. Images are drawn at the model's preprocessing (shorter side to `image_size`, bicubic, centre
crop, the model's mean/std) in the set's stored order; the view has a single split, "all": held-out images come
from k-fold splits over the whole set (`eval/transfer.py`), so every image is scored once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from genlip_lit.data.transforms import Preprocessing
from genlip_lit.errors import GenLIPUserError
from genlip_lit.eval.data import EvalBatch, EvalView, Vocabulary


@dataclass(frozen=True)
class RealSet:
    """A labelled set: uint8 images [N, H, W] (gray) or [N, H, W, 3], labels [N], class names."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    origin: str  # where the files come from and their licence, for reports


def _sklearn_digits() -> RealSet:
    """scikit-learn's copy of the UCI handwritten digits test set (sklearn/datasets/data/digits.csv.gz, in the
    wheel): 1,797 8x8 images of 0-16 ink levels from 43 writers (UCI ML repository, CC BY 4.0; scikit-learn BSD)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise GenLIPUserError("the digits transfer probe needs scikit-learn: pip install 'genlip_lit[transfer]'") from None
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # white ink on black, as stored
    return RealSet(images, digits.target.astype(np.int64), [str(d) for d in range(10)],
                   "scikit-learn load_digits (UCI optical recognition of handwritten digits, CC BY 4.0)")


REAL_SETS: dict[str, Callable[[], RealSet]] = {"digits": _sklearn_digits}


def load_real_set(name: str) -> RealSet:
    """A set of `REAL_SETS` by name; an unknown name is a user error listing the known ones."""
    if name not in REAL_SETS:
        raise GenLIPUserError(f"unknown real image set {name!r}; known: {sorted(REAL_SETS)}")
    return REAL_SETS[name]()


class RealImageView(EvalView):
    """One `REAL_SETS` set at a model's preprocessing; one split, "all" (k-fold splits are the evaluation's)."""

    splits = ("all",)

    def __init__(self, name: str, preprocessing: Preprocessing, device: torch.device | str = "cpu") -> None:
        self.name = name
        self.data = load_real_set(name)
        super().__init__(Vocabulary(class_names=list(self.data.class_names)), device, f"real:{name}")
        self.transform = preprocessing.transform()

    @property
    def num_images(self) -> int:
        return len(self.data.labels)

    def _batches(self, split: str, batch_size: int) -> Iterator[EvalBatch]:
        images, labels = self.data.images, self.data.labels
        for start in range(0, len(labels), batch_size):
            chunk = images[start : start + batch_size]
            pixels = torch.stack([self.transform(_to_rgb(im)) for im in chunk])
            yield EvalBatch(pixels.to(self.device), torch.as_tensor(labels[start : start + batch_size]).to(self.device))


def _to_rgb(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image).convert("RGB")
