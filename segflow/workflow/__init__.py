"""The torch-free engine: reading and checking workflow files, wiring, running, the run directory,
the schema and the catalogue. Imports no torch, monai, albumentations or nibabel at module level."""
