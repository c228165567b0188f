-- API keys (SPEC §3): only a SHA-256 hash of the secret is stored.
CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY NOT NULL,   -- the <id> part of wdn_<id>_<secret>
    name         TEXT NOT NULL,
    role         TEXT NOT NULL,
    models       TEXT,                        -- comma-separated allowlist; NULL = every model
    secret_hash  {blob} NOT NULL,               -- SHA-256 of the secret, 32 bytes
    created_at   {int} NOT NULL,            -- Unix seconds
    expires_at   {int},                     -- Unix seconds; NULL = never
    revoked_at   {int},                     -- Unix seconds; NULL = active
    rotated_from TEXT REFERENCES api_keys(id)
){strict};
CREATE INDEX api_keys_role ON api_keys(role);
