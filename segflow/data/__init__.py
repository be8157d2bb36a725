"""Dataset reading, phantoms, augmentation and loaders behind MedicalSegmentationLoader."""
