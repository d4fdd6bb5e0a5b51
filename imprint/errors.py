"""The one error tree of imprint.

Every failure a user can meet is an :class:`ImprintError`; the CLI prints its
message on one line and exits non-zero. Anything else escaping is a bug.

    ImprintError
    ├── ConfigError          bad option, data dir, workspace name (exit 2)
    ├── InputError           a record or file the user gave is malformed
    ├── ModelError           the embedding model cannot be loaded
    ├── StoreError           Qdrant or SQLite refused an operation
    └── SyncError            a sync session ended without merging
        ├── RelayError       cannot reach the relay, or it closed on us
        ├── ProtocolError    the peer sent something we do not accept
        ├── AuthError        wrong PIN, or key confirmation failed
        ├── RejectedError    a human (or policy) said no
        └── PeerTimeoutError the peer went silent

    KeyboardInterrupt
    └── Terminated           SIGTERM (exit 143; Ctrl-C exits 130)
"""

from __future__ import annotations


class ImprintError(Exception):
    """Root of every error imprint reports to a user."""

    exit_code: int = 1


class ConfigError(ImprintError):
    """A setting is unusable: data dir not writable, bad workspace name, bad URL.

    Fix the option or environment variable the message names.
    """

    exit_code = 2


class InputError(ImprintError):
    """Input from the user (text, a file, a line) is malformed.

    Nothing was stored from the offending input; correct it and run again.
    """


class ModelError(ImprintError):
    """The embedding model could not be loaded or does not fit the workspace.

    Check `--model` / `IMPRINT_MODEL`; models must be available offline.
    """


class StoreError(ImprintError):
    """The memory store (Qdrant) or fact store (SQLite) refused an operation.

    Often another imprint process holds the data dir; stop it and retry.
    """


class SyncError(ImprintError):
    """A sync session ended before both sides merged.

    What was received is kept in the receive spool and stored (a batch whole,
    or not yet) by the next command that opens the store; running the same
    sync again completes it without duplicates.
    """


class RelayError(SyncError):
    """The relay could not be reached, refused us, or closed the connection.

    Check the relay address and that the other side is still running.
    """


class ProtocolError(SyncError):
    """The peer sent a frame we do not accept (shape, order, size).

    The session ends and nothing from the bad frame is stored. The peer may
    run an incompatible version, or the relay may be tampering.
    """


class AuthError(SyncError):
    """The PIN was wrong or the peers could not confirm a shared key.

    Start a new `serve` session and type its fresh PIN.
    """


class RejectedError(SyncError):
    """The other side's user, or its trust policy, rejected this session."""


class PeerTimeoutError(SyncError):
    """The peer sent nothing for longer than the session allows."""


class Terminated(KeyboardInterrupt):
    """The system asked the command to stop (SIGTERM).

    Handled like Ctrl-C: whole batches are kept, the peer is told, and the
    command exits 143 (Ctrl-C: 130) within a few seconds.
    """

    exit_code = 143
