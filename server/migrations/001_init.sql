-- Ferry schema v1. Every metadata table is keyed by namespace_id first
-- (so it can be distributed by that column), except the global ones:
-- users, devices, blocks.

CREATE TABLE users (
    user_id       bigserial PRIMARY KEY,
    name          text NOT NULL UNIQUE,
    password_hash text NOT NULL,
    root_ns       bigint,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE namespaces (
    namespace_id bigserial PRIMARY KEY,
    owner_id     bigint NOT NULL REFERENCES users(user_id),
    kind         text NOT NULL DEFAULT 'root',
    head_seq     bigint NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- who may read/write a namespace, and where it is mounted in their tree
CREATE TABLE members (
    namespace_id bigint NOT NULL REFERENCES namespaces(namespace_id),
    user_id      bigint NOT NULL REFERENCES users(user_id),
    role         text NOT NULL CHECK (role IN ('owner', 'editor', 'viewer')),
    mount_path   text NOT NULL,
    PRIMARY KEY (namespace_id, user_id)
);
CREATE INDEX members_by_user ON members (user_id);

CREATE TABLE devices (
    device_id  bigserial PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES users(user_id),
    name       text NOT NULL,
    token_hash bytea NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz,
    revoked_at timestamptz
);

CREATE SEQUENCE ids;  -- file and version ids (unique across namespaces)

-- immutable: one row per saved state of a file or folder (or a tombstone)
CREATE TABLE versions (
    namespace_id bigint NOT NULL,
    version_id   bigint NOT NULL,
    file_id      bigint NOT NULL,
    path         text COLLATE "C" NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('file', 'dir')),
    deleted      boolean NOT NULL DEFAULT false,
    size         bigint NOT NULL DEFAULT 0,
    mtime_ns     bigint NOT NULL DEFAULT 0,
    executable   boolean NOT NULL DEFAULT false,
    content_hash bytea,
    block_hashes bytea NOT NULL DEFAULT ''::bytea,  -- n x 32 raw SHA-256
    block_sizes  integer[] NOT NULL DEFAULT '{}',
    device_id    bigint,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace_id, version_id)
);
CREATE INDEX versions_by_file ON versions (namespace_id, file_id, version_id);

-- append-only: seq 1, 2, 3... per namespace; a snapshot is a cut at a seq
CREATE TABLE journal (
    namespace_id bigint NOT NULL,
    seq          bigint NOT NULL,
    version_id   bigint NOT NULL,
    PRIMARY KEY (namespace_id, seq)
);

-- the live tree: one row per existing path
CREATE TABLE heads (
    namespace_id bigint NOT NULL,
    path         text COLLATE "C" NOT NULL,
    parent       text COLLATE "C" NOT NULL,
    file_id      bigint NOT NULL,
    version_id   bigint NOT NULL,
    kind         text NOT NULL,
    seq          bigint NOT NULL,
    PRIMARY KEY (namespace_id, path)
);
CREATE INDEX heads_children ON heads (namespace_id, parent, path);

CREATE TABLE blocks (
    hash       bytea PRIMARY KEY,
    size       integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- blocks a namespace's versions reference: who may read (and skip sending) a block
CREATE TABLE namespace_blocks (
    namespace_id bigint NOT NULL,
    hash         bytea NOT NULL,
    PRIMARY KEY (namespace_id, hash)
);

-- blocks a user uploaded, pending or committed (also the GC grace record)
CREATE TABLE uploads (
    user_id    bigint NOT NULL,
    hash       bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, hash)
);

-- idempotency: the first result of each keyed request
CREATE TABLE requests (
    user_id    bigint NOT NULL,
    key        text NOT NULL,
    result     jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
