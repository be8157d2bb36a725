"""The one error planning raises: a message for the user that names the case and file."""


class PlanError(ValueError):
    """Bad input or an impossible plan; `segflow plan` prints it without a traceback."""
