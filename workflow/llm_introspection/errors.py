"""The one error type for bad input: a config, a prompt file or a model the user named."""


class InputError(Exception):
    """Bad user input; the message names the file, key or model at fault."""
