"""Ferry's mobile SDK: an on-demand client over the server's HTTP API
(``/api/v1``), for phones and other light clients that browse rather than mirror.

Terms:

entry
    A file or folder as the server describes it (:class:`protocol.messages.Entry`):
    path, version, size and, for files, the ordered list of its blocks with
    each block's SHA-256 and size.
block cache
    Blocks already fetched, on disk under the home folder, bounded in bytes
    (least recently used evicted first), hash-checked on every read
    (:mod:`mobile_sdk.cache`). Blocks are immutable, so a cached block is
    never stale.
pinned file
    A file kept whole in the cache whatever the bound, and brought up to date
    when ``changes()`` sees it change.
cursor
    Where this device is in the server's change journal; ``changes()``
    advances it, ``wait_for_changes()`` long-polls on it.

Use :class:`Client` (async) or :class:`SyncClient` (blocking). Calls that
need the server raise :class:`OfflineError` when it cannot be reached.
"""

from mobile_sdk.client import Client
from mobile_sdk.errors import ApiError, CorruptBlock, FerryError, NotLoggedIn, OfflineError
from mobile_sdk.reader import RemoteFile
from mobile_sdk.sync import SyncClient, SyncFile

__all__ = [
    "ApiError",
    "Client",
    "CorruptBlock",
    "FerryError",
    "NotLoggedIn",
    "OfflineError",
    "RemoteFile",
    "SyncClient",
    "SyncFile",
]
