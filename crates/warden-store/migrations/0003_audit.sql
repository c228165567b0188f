-- The tamper-evident audit trail (issue 5): one hash chain per replica.
-- Each row's mac is HMAC-SHA256 over (replica, seq, prev, record) under a key
-- the database never sees; prev is the previous row's mac.
CREATE TABLE audit (
    replica TEXT NOT NULL,
    seq     {int} NOT NULL,     -- 1, 2, 3, ... per replica
    record  TEXT NOT NULL,        -- canonical JSON of the record
    prev    {blob} NOT NULL,        -- the previous row's mac (32 zero bytes for seq 1)
    mac     {blob} NOT NULL,
    PRIMARY KEY (replica, seq)
){strict};
