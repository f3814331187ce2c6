"""Data nobody here wrote, laid out as a user's own: scikit-learn's wine table, Fashion-MNIST pictures in class folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def wine_table(path: Path, label: str = "kind") -> pd.DataFrame:
    """Write scikit-learn's wine table as CSV (13 numeric features, ``label`` = class_0..class_2); return it."""
    from sklearn.datasets import load_wine

    wine = load_wine(as_frame=True)
    frame = wine.frame.rename(columns={"target": label})
    frame[label] = [str(wine.target_names[i]) for i in wine.target]
    frame.to_csv(path, index=False)
    return frame


def save_pictures(root: Path, pictures: dict[str, np.ndarray]) -> Path:
    """An ImageFolder layout: ``root/<class>/<n>.png``, each uint8 [28, 28] picture saved as 8-bit grayscale."""
    from PIL import Image

    for name, images in pictures.items():
        (root / name).mkdir(parents=True)
        for i, image in enumerate(images):
            Image.fromarray(image, "L").save(root / name / f"{i:03d}.png")
    return root
