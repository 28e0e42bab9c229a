"""The two ways a batch extraction stops: the user asked for something impossible, or the run itself failed."""


class UsageError(Exception):
    """Bad arguments (no inputs, unknown model or layer, an out dir holding another job): exit status 2."""


class ExtractError(Exception):
    """The run could not go on (server unreachable, disk full); what is done is kept for a rerun: exit status 1."""
