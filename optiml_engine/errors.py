"""Errors a user can cause. The CLI prints them as one line and exits with code 2."""


class OptimlError(Exception):
    """A mistake in a user's input: a recipe, a task file, a checkpoint path.

    `where` names the file (and record or key), `what` says what is wrong, `fix` says what to do.
    """

    exit_code = 2

    def __init__(self, where: str, what: str, fix: str | None = None):
        self.where, self.what, self.fix = where, what, fix
        message = f"{where}: {what}"
        if fix:
            message += f" ({fix})"
        super().__init__(message)


class Diverged(OptimlError):
    """The run diverged (inf/NaN losses or gradients): one line, but exit code 1, since the
    inputs were valid and the run itself failed."""

    exit_code = 1
