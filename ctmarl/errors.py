"""Errors a user can cause and fix: the CLI prints them as one line and exits non-zero."""

from __future__ import annotations


class CtmarlError(Exception):
    """Base of every error that is the user's input, not a bug in ctmarl."""


class ConfigError(CtmarlError):
    """A scenario, method or learner configuration is malformed or has a bad value."""


class UnknownNameError(CtmarlError):
    """A registry was asked for a name it does not hold."""


class PluginError(CtmarlError):
    """A method, learner or env family from a plug-in distribution cannot be used: two
    distributions register its name, it takes a reference name, it fails to import, or it raised
    inside one of its hooks. Its ``__cause__``, when set, is the plug-in's own exception, whose
    traceback the CLI writes to a log file."""


class ContractError(PluginError):
    """A method broke the method contract during a run (:mod:`ctmarl.contract`): a hook changed
    parameters outside its declared scope, moved the output of a method declaring
    ``preserves_output``, left a trainable parameter out of the optimizer, or its state cannot be
    checkpointed; or its class declarations are malformed."""


class RecordError(CtmarlError):
    """A run record is missing, corrupt, or fails validation."""


class OutputError(CtmarlError):
    """An output location cannot be written."""


class CheckpointError(CtmarlError):
    """A checkpoint is corrupt, belongs to another run, or is in the way of a fresh start."""


class NonFiniteLossError(CtmarlError):
    """Training produced a NaN or infinite loss; the run stopped, its last checkpoint is kept."""


class RunInterrupted(CtmarlError):
    """The user (Ctrl-C) or a scheduler (SIGTERM) interrupted a run; a checkpoint was written if the
    run had a place for one. ``signal_name`` is the signal that asked; the CLI exits with
    128 + its number (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, message: str, signal_name: str = "SIGINT"):
        super().__init__(message)
        self.signal_name = signal_name

    @property
    def exit_status(self) -> int:
        import signal

        return 128 + int(getattr(signal, self.signal_name, signal.SIGINT))


def shorten(text: object, limit: int = 80) -> str:
    """``text`` (or its ``str``) cut to ``limit`` characters, ending in "..." when cut.

    Error messages echo names and values from user input (an ``env.family``, a key, a string
    value); a 10^6-character one must not become a 10^6-character error line."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
