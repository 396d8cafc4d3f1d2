"""Typed errors of the toolkit; the CLI turns them into one-line messages."""


class ML3Error(Exception):
    """Base class of errors the CLI reports as a one-line message with a non-zero exit."""


class FeatureSpecError(ML3Error, ValueError):
    """A learned loss was asked to read features it was not trained on."""


class LossFileError(ML3Error, ValueError):
    """A learned-loss file is missing, corrupt or inconsistent with its sidecar."""


class NonFiniteError(ML3Error, FloatingPointError):
    """A loss or gradient became NaN or infinite; the last good checkpoint is left intact."""


class RunDirError(ML3Error):
    """The output directory holds another run (refused unless resuming or overwriting)."""


class CheckpointError(ML3Error, ValueError):
    """A checkpoint is unreadable or does not fit the run resuming from it (nothing restored)."""
