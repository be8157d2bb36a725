"""The torch optimizer behind the Optimizer node."""
