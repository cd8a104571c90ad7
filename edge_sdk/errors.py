"""Every error edge_sdk raises derives from EdgeError, so callers (and CLIs) catch one type."""

from __future__ import annotations


class EdgeError(Exception):
    """Base class: a problem the user can fix; the message says what to do."""


class BundleError(EdgeError):
    """The bundle folder is missing, incomplete, or its files do not match the manifest."""


class ManifestError(BundleError):
    """The manifest is malformed or of a schema version this runtime does not understand."""


class HashMismatchError(BundleError):
    """A model file's sha256 differs from the one recorded in the manifest."""


class BackendError(EdgeError):
    """The inference runtime named in the manifest is missing or refused the model."""


class InputError(EdgeError):
    """An input given to predict()/infer() has the wrong shape, dtype or name."""


class SourceError(EdgeError):
    """A video source (camera, file, stream, folder) cannot be opened or read."""


class ModelMismatchError(ManifestError, BackendError):
    """The manifest does not describe the model file (a tensor name, dtype or quantization
    differs): a manifest problem found by the runtime, so it is both."""


class ProviderWarning(UserWarning):
    """An execution provider the bundle asks for is missing: the model runs, but slower."""
