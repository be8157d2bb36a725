"""Exporting a trained network (ONNX, torch.export, TorchScript) behind the ModelExport node."""
