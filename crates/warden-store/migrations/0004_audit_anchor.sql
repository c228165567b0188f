-- Where a pruned audit chain starts (audit retention): the signed
-- checkpoint of the last row removed. `warden audit verify` checks the
-- first remaining row's prev against head and the signature with the key.
CREATE TABLE audit_anchor (
    replica TEXT NOT NULL PRIMARY KEY,
    seq     {int} NOT NULL,     -- the last sequence number removed
    head    {blob} NOT NULL,    -- that row's mac
    sig     {blob} NOT NULL     -- HMAC of (replica, seq, head), as a checkpoint's
){strict};
