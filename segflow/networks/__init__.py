"""Networks behind the network nodes (MONAI-backed where MONAI has one)."""
