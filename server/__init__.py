"""The Ferry sync server.

Terms: a *user* logs in from *devices*, each holding a revocable bearer
token (stored hashed). Every user owns a *root namespace*; a namespace has a
*journal* (seq 1, 2, 3...) of *versions* and a *head* per live path. *Blocks*
are content-addressed bytes in a *block store* (local disk or S3), fronted by
a byte-bounded LRU *cache*. The *metastore* (PostgreSQL via asyncpg) commits
metadata in one transaction per change and NOTIFYs; the *notifier* fans those
notices out to connected devices as ``changed`` hints.
"""
