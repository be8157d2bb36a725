"""segflow: medical image segmentation from validated JSON workflows."""

__version__ = "0.1.0"
