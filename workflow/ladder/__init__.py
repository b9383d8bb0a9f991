"""ladder: reproducible experiment ladders for small-image classification."""

__version__ = "0.1.0"
