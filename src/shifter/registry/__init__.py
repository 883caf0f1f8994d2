"""HTTP client for the OCI distribution API: auth flows, mirrors, verified resumable blobs.

See :mod:`shifter.registry.client` for the entry point, :class:`RegistryClient`.
"""

from shifter.registry.cache import BlobCache
from shifter.registry.client import RegistryClient, ResolvedImage
from shifter.registry.credentials import Credential, CredentialStore
from shifter.registry.progress import NullProgress, ProgressSink
from shifter.registry.session import RetryPolicy

__all__ = ["BlobCache", "Credential", "CredentialStore", "NullProgress", "ProgressSink", "RegistryClient",
           "ResolvedImage", "RetryPolicy"]
