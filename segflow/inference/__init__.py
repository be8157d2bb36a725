"""Loading weights and prediction (sliding windows, TTA, ensembles) behind the inference nodes."""
