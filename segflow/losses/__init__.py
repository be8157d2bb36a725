"""The segmentation losses behind the LossFunction node."""
