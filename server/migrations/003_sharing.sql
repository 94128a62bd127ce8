-- Ferry schema v3: shared folders (invitations), read-only links, quotas.

-- a shared folder's name (the name of the folder it was made from)
ALTER TABLE namespaces ADD COLUMN name text;
CREATE INDEX namespaces_by_owner ON namespaces (owner_id);

-- pending invitations to a shared folder; accepting one makes a members row
CREATE TABLE invitations (
    namespace_id bigint NOT NULL REFERENCES namespaces(namespace_id),
    user_id      bigint NOT NULL REFERENCES users(user_id),
    role         text NOT NULL CHECK (role IN ('editor', 'viewer')),
    invited_by   bigint NOT NULL REFERENCES users(user_id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace_id, user_id)
);
CREATE INDEX invitations_by_user ON invitations (user_id);

-- read-only links: a path in a namespace, reachable by whoever holds the token
CREATE TABLE links (
    namespace_id  bigint NOT NULL REFERENCES namespaces(namespace_id),
    link_id       bigserial,
    token_hash    bytea NOT NULL UNIQUE,  -- sha256 of the token; the token itself is never stored
    path          text COLLATE "C" NOT NULL,
    created_by    bigint NOT NULL REFERENCES users(user_id),
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    password_hash text,  -- argon2, as users' passwords
    revoked_at    timestamptz,
    -- wrong passwords: at most a few per window, then the link refuses every try until it ends
    failures      integer NOT NULL DEFAULT 0,
    failures_from timestamptz,
    PRIMARY KEY (namespace_id, link_id)
);
CREATE INDEX links_by_creator ON links (created_by);

-- bytes of latest versions a user may own (NULL: no limit)
ALTER TABLE users ADD COLUMN quota_bytes bigint CHECK (quota_bytes >= 0);
