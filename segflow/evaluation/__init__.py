"""Metrics and overlays behind the Evaluator and SegmentationOverlay nodes."""
