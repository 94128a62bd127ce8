"""Ferry's sans-I/O protocol core, shared by the server, the desktop client,
the mobile SDK and (later) the LAN peer link.

Terms:

- A *block* is up to 4 MiB of file content named by its SHA-256 (``BlockHash``,
  32 raw bytes, hex on the JSON wire). Files are cut into blocks with FastCDC
  (:mod:`protocol.chunking`) so an insertion changes about one block.
- A *namespace* is a tree of paths with its own journal; every user has a root
  namespace. Paths inside it follow :mod:`protocol.paths`.
- A *version* is an immutable state of one file or folder (an *entry*): its
  path, size, mtime, executable bit and ordered block list.
- A *message* is one typed value (:mod:`protocol.messages`). Control messages
  travel as JSON text frames; block bytes travel as binary frames with a fixed
  header (:mod:`protocol.framing`), never base64.

Nothing here does I/O: callers feed bytes in and take values out.
"""

PROTOCOL_VERSIONS: tuple[int, ...] = (1,)
"""Protocol versions this code speaks, newest last."""
