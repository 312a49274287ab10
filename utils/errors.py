"""The project's user errors: mistakes a user can fix (a path, a metadata entry, a checkpoint, a flag).

Every script's main (utils.cli.run_main) prints a UserError as one `error: ...` line and exits with 2.
Anything else is a bug and keeps its traceback, so never raise a UserError for a programming error,
and never catch a plain ValueError/RuntimeError to turn it into one.
"""
from __future__ import annotations


class UserError(Exception):
    """Base class: the message is one line that names what to fix."""


class FlagError(UserError):
    """A command-line value that cannot work (out of range, not finite, contradicting another flag)."""


class RunFolderError(UserError):
    """A run folder that cannot be used as asked (already holds a run, or holds none to evaluate)."""


class UnknownNameError(UserError, ValueError):
    """A name (a backbone, an f or g of HyperCUT, a loss type) that no registry holds, from a flag or a
    checkpoint; also a ValueError, as any bad argument is."""
