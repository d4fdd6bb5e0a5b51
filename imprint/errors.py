"""The one error tree of imprint.

Every failure a user can meet is an :class:`ImprintError`; the CLI prints its
message on one line and exits non-zero. Anything else escaping is a bug.

    ImprintError
    ├── ConfigError                 bad option, data dir, workspace name (exit 2)
    ├── InputError                  a record or file the user gave is malformed
    ├── ModelError                  the embedding model cannot be loaded
    ├── StoreError                  Qdrant or SQLite refused an operation
    │   └── SpoolFullError          the receive spool is over its limit
    └── SyncError                   a sync session ended without merging
        ├── RelayError              cannot reach the relay, or it closed on us
        ├── ProtocolError           the peer sent something we do not accept
        │   ├── TamperedFrameError  a sealed frame failed its checks
        │   ├── UnsupportedVersionError  the peer speaks another protocol version
        │   └── PeerStreamError     the peer sent an error frame mid-stream
        ├── AuthError               wrong PIN, or key confirmation failed
        ├── RejectedError           a human (or policy) said no
        ├── PeerTimeoutError        the peer went silent
        ├── ChannelExhaustedError   2**64 frames sealed (never in practice)
        └── StageFailed             a stage of the sync broke (a bug)

    KeyboardInterrupt
    └── Terminated           SIGTERM (exit 143; Ctrl-C exits 130)
"""

from __future__ import annotations

from imprint.text import clip

#: The message of the error frame a side sends when its user stops the sync
#: (Ctrl-C, SIGTERM); the other side recognises it.
INTERRUPTED = "the other machine stopped the sync (interrupted by its user)"


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


class StageFailed(SyncError):
    """A stage of the sync (an actor) broke on something it did not expect: a bug.

    The session ends at once, with the stage named; what was received is kept.
    """


class SpoolFullError(StoreError):
    """The receive spool holds more than its limit of batches waiting to be stored.

    Nothing of the batch that did not fit was kept; the batches before it are
    stored. Raise the limit (`--spool-limit`, env IMPRINT_SPOOL_LIMIT) or free
    disk space, then run the sync again.
    """


class TamperedFrameError(ProtocolError):
    """A sealed frame failed its checks: altered, replayed, reordered, dropped,
    truncated or reflected between the peers.

    Keys were confirmed, so the peer is genuine; the relay (or the network
    under it) interfered, or, less likely, the peer has a bug. The channel is closed for good and nothing from the
    bad frame was used. Run the sync again, through another relay if it
    happens twice.
    """


class UnsupportedVersionError(ProtocolError):
    """The peer's handshake names a secure-sync protocol version we do not speak.

    Install the same imprint version on both machines and start a new session.

    Attributes:
        peer_version: The version the peer's frame named.
        our_version: The version this device speaks.
    """

    def __init__(self, peer_version: int, our_version: int = 1) -> None:
        self.peer_version = peer_version
        self.our_version = our_version
        super().__init__(
            f"the peer speaks imprint sync protocol version {peer_version}, this device "
            f"speaks version {our_version}: install the same imprint version on both machines"
        )


class ChannelExhaustedError(SyncError):
    """This side sealed as many frames as one channel may number.

    Never happens in practice (2**64 frames); start a new session to go on.
    """


class PeerStreamError(ProtocolError):
    """The peer sent an ``error`` frame: it failed while streaming to us.

    ``message`` is the peer's own text. The batches stored before it stay
    stored; running the same sync again completes it without duplicates.
    """

    def __init__(self, message: str) -> None:
        if message == INTERRUPTED:
            super().__init__(f"{INTERRUPTED}; what was received is kept, run the sync again to complete it")
        else:
            super().__init__(f"peer failed while streaming: {clip(message)}")
        self.message = message


class DiskFullError(StoreError):
    """The disk of the data dir is nearly full: nothing more is written until space is freed.

    Checked before each write the store, the facts database or the receive spool would make,
    so an engine never meets a full disk half-way (a memory-mapped store can then only crash).
    What was stored before stays; what a sync had received waits in the spool.
    """
