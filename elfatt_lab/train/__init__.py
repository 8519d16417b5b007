"""Training: ``elfatt train`` / ``python -m elfatt_lab.train``, on image folders, scikit-learn's digits and LRA."""

from elfatt_lab.train.loop import TrainConfig, train

__all__ = ["TrainConfig", "train"]
