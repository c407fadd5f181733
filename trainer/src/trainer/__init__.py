"""finsent trainer: BERT (keras-hub) and BiLSTM financial-sentiment models, run as `python -m trainer.task`."""

__version__ = "0.1.0"

LABELS = ("negative", "neutral", "positive")
