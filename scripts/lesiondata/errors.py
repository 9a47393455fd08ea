"""The one error type the converters raise for bad input."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad or unexpected input data.

    The message always names the file (or folder) and says what was wrong and what to do about it.

    Args:
        path: the offending file or folder (``None`` where no single file is to blame).
        problem: what is wrong, e.g. ``"mask is 100x80 but its image is 120x80"``.
        hint: what the user can do, e.g. ``"pass --overwrite to replace it"``.
    """

    def __init__(self, path: str | Path | None, problem: str, hint: str = "") -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        self.hint = hint
        where = f"{self.path}: " if self.path is not None else ""
        message = f"{where}{problem}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)

    def __reduce__(self):  # keep the exception picklable despite the custom signature
        return (self.__class__, (self.path, self.problem, self.hint))
