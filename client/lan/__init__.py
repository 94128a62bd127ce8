"""LAN sync: devices on one network hand each other blocks, so the server
sends a file into a building once.

Terms:

peer
    Another Ferry device on the LAN (``ferry sync`` running), reached over TLS
    at the port it announces (or the ``--lan-peer HOST:PORT`` given).
ticket
    The server's signed statement that a TLS key fingerprint belongs to a
    device that may read the namespaces whose opaque tags it lists, for a few
    minutes (``protocol.lan``, ``server.lan``). Peers check tickets with the
    server's public key, which the device got at login.
peer link
    One TLS connection speaking the sync protocol's own messages over
    ``protocol.framing``'s stream framing: ``hello`` (with the asking device's
    ticket, certificate and proof) → ``welcome`` (with the serving device's
    ticket), then ``get_block`` → the same DATA block frames the server sends,
    or an ``error``.
block index
    Where this device holds each block of its synced files (path, offset,
    namespace): what it may serve. Every block is hash-checked when read
    for a peer and again by the peer that receives it.

Modules: ``identity`` (TLS key, tickets), ``link`` (both ends of a peer link),
``discovery`` (UDP broadcast), ``node`` (the whole: what the sync engine uses).
"""
