-- Ferry schema v2: version history, snapshots (journal cuts), retention, GC, fsck.

-- When each journal row was committed. Every row of one change shares the
-- time, and times strictly increase per namespace (metastore._Tx.begin), so a
-- time names exactly one cut: the last seq committed at or before it.
ALTER TABLE journal ADD COLUMN committed_at timestamptz;
UPDATE journal j SET committed_at = v.created_at
  FROM versions v WHERE v.namespace_id = j.namespace_id AND v.version_id = j.version_id;
UPDATE journal SET committed_at = now() WHERE committed_at IS NULL;
ALTER TABLE journal ALTER COLUMN committed_at SET DEFAULT now(),
                    ALTER COLUMN committed_at SET NOT NULL;
CREATE INDEX journal_by_time ON journal (namespace_id, committed_at, seq);

ALTER TABLE namespaces
  ADD COLUMN last_commit_at timestamptz,  -- committed_at of head_seq
  ADD COLUMN keep_versions_days integer CHECK (keep_versions_days >= 0),  -- NULL: the server's default
  ADD COLUMN pruned_before timestamptz;  -- cuts before this time may miss pruned versions
UPDATE namespaces n SET last_commit_at =
  (SELECT max(committed_at) FROM journal j WHERE j.namespace_id = n.namespace_id);

-- fsck --repair marks versions whose blocks are missing or corrupt
ALTER TABLE versions ADD COLUMN damaged boolean NOT NULL DEFAULT false;

-- Which version stood at which path over which journal range: the row is
-- valid for from_seq <= seq < to_seq (to_seq NULL: still there). Written in
-- the same change transaction as the journal (metastore._Tx.write). A snapshot
-- at seq S is the rows valid at S; tombstones have no row.
CREATE TABLE path_history (
    namespace_id bigint NOT NULL,
    path         text COLLATE "C" NOT NULL,
    from_seq     bigint NOT NULL,
    to_seq       bigint,
    file_id      bigint NOT NULL,
    version_id   bigint NOT NULL,
    PRIMARY KEY (namespace_id, path, from_seq) INCLUDE (to_seq, file_id, version_id)
);
-- the open row of a file (closed when the file gets its next version)
CREATE INDEX path_history_open ON path_history (namespace_id, file_id) WHERE to_seq IS NULL;
-- retention: rows that ended before a horizon
CREATE INDEX path_history_closed ON path_history (namespace_id, to_seq) WHERE to_seq IS NOT NULL;

INSERT INTO path_history (namespace_id, path, from_seq, to_seq, file_id, version_id)
SELECT namespace_id, path, seq, next_seq, file_id, version_id FROM (
    SELECT j.namespace_id, v.path, j.seq, v.file_id, v.version_id, v.deleted,
           lead(j.seq) OVER (PARTITION BY j.namespace_id, v.file_id ORDER BY j.seq) AS next_seq
    FROM journal j JOIN versions v ON v.namespace_id = j.namespace_id AND v.version_id = j.version_id
) h WHERE NOT deleted;

-- GC: is a block referenced, or uploaded recently?
CREATE INDEX namespace_blocks_by_hash ON namespace_blocks (hash);
CREATE INDEX uploads_by_hash ON uploads (hash, created_at);

-- what the running server was started with, so `ferry admin gc|fsck|retention`
-- use the same block store and retention without repeating the flags
CREATE TABLE server_settings (
    name       text PRIMARY KEY,
    value      text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
