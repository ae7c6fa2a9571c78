"""One exception type for every user-facing problem.

The CLI prints `str(err)` as a single line and exits with status 2: a user with a bad photo or a
missing model folder should read what is wrong and how to fix it, never a traceback.
"""


class PersonifyError(Exception):
    """A problem with the user's input: the message names the file and the fix, in one line."""


class ConfigError(PersonifyError, ValueError):
    """A config value (from the CLI, a YAML/TOML file or Python) is out of range or inconsistent."""
