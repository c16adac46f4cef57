"""The one exception data problems raise, so entry points can report them without a stack trace."""


class DataError(ValueError):
    """A dataset, file or tokenizer is unusable; the message says which and how to fix it."""
