"""Code shared by train.py and eval.py: data, sampling, losses, indexes, metrics, Hub export."""
