-- Identity (issue 3): key last-use, users, OAuth2 clients, token signing keys.
ALTER TABLE api_keys ADD COLUMN last_used_at {int};   -- Unix seconds, flushed every few seconds

-- Users of the OAuth2 password grant. Passwords are Argon2id PHC strings.
CREATE TABLE users (
    name          TEXT PRIMARY KEY NOT NULL,
    role          TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at    {int} NOT NULL,
    disabled_at   {int}
){strict};

-- OAuth2 clients (client_credentials grant). Secrets are Argon2id PHC strings.
CREATE TABLE oauth_clients (
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at  {int} NOT NULL,
    revoked_at  {int}
){strict};

-- Ed25519 keys that sign the tokens Warden issues. A retired key stops
-- signing at once but stays published until its last token has expired.
CREATE TABLE signing_keys (
    kid           TEXT PRIMARY KEY NOT NULL,
    private_pkcs8 {blob} NOT NULL,
    public_key    {blob} NOT NULL,
    created_at    {int} NOT NULL,
    retired_at    {int}
){strict};
