"""Training: ``elfatt train`` / ``python -m elfatt.train``, on image folders, scikit-learn's digits and LRA."""

from elfatt.train.loop import TrainConfig, train

__all__ = ["TrainConfig", "train"]
