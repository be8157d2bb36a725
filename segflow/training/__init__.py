"""The training loop, checkpoints and schedules behind the Trainer node."""
