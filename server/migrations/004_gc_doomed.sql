-- blocks GC is deleting: marked (and committed) before their objects are deleted,
-- unmarked in the transaction that deletes their rows. A mark left behind by a
-- GC killed mid-sweep means "the object may be gone": the block counts as not
-- stored (a client must send its bytes again) until re-uploaded or collected.
CREATE TABLE gc_doomed (
    hash  bytea PRIMARY KEY,
    since timestamptz NOT NULL DEFAULT now()
);
