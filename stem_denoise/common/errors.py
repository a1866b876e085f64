"""Exceptions that every package raises for problems the user can fix.

Scripts turn an :class:`InputError` (and its subclasses) into one line on stderr and
exit status 2; anything else is a bug and keeps its traceback.
"""


class InputError(Exception):
    """Bad input from the user: a file, a folder, an option or a config value."""


class ConfigError(InputError):
    """A config file or option set with an unknown key, a wrong type or a bad value."""


class CheckpointError(InputError):
    """A checkpoint that is missing, truncated, unsafe, or of another kind or architecture."""


class MetadataWarning(UserWarning):
    """Metadata that was read but not believed (an absurd pixel size, say): ignored, never written back.

    Scripts print it as one ``warning: ...`` line on stderr (see :func:`stem_denoise.common.cli.run_main`).
    """
