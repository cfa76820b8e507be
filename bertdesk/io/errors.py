"""Errors raised while reading or writing checkpoints."""


class CheckpointError(ValueError):
    """A checkpoint cannot be loaded as asked. The message names the file and,
    where it applies, the tensor and what was expected."""
