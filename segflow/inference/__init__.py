"""Prediction, evaluation, overlays and export behind the inference and export nodes."""
