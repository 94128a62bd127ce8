"""The Ferry desktop client.

Terms: the *home* (``$FERRY_HOME`` or ``--home``) holds this device's
credentials and state; a *connection* (:mod:`client.transport`) is one
authenticated WebSocket to the server speaking :mod:`protocol`; *transfers*
(:mod:`client.transfer`) move files as content-defined blocks, sending only
blocks the server lacks and writing downloads atomically.
"""
