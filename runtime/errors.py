"""The one exception type users see: its message is a single sentence that says what to do."""


class EdgeAsrError(Exception):
    """A failure the user can act on; the CLI prints str(err) and exits non-zero."""


def require(condition: bool, message: str) -> None:
    """The check every validate() is written with: EdgeAsrError(message) unless ``condition``."""
    if not condition:
        raise EdgeAsrError(message)


class AudioError(EdgeAsrError):
    """An input that is not usable audio (corrupt, empty, unreadable)."""


class BundleError(EdgeAsrError):
    """A bundle this runtime cannot run (missing files, bad hash, other target, missing backend)."""


class ModelSourceError(EdgeAsrError):
    """A model name or checkpoint that cannot be read."""
