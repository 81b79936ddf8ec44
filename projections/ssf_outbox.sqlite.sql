-- ssf_outbox (SQLite): the SSF transmitter's delivery state. NOT a view: a durable queue of signed
-- Security Event Tokens; `mission-ledger rebuild` never drops or replays it (rebuilding would
-- re-send history with new jtis). Applied by mission_ledger.ssf.outbox_store from this file, in
-- its own database file <data_dir>/ssf.sqlite3 (the library's `tracking` table name is fixed).
-- Timestamps are UTC text of fixed width, 'YYYY-MM-DDTHH:MM:SS.ffffffZ' (text order = time
-- order). JSON columns hold RFC 8785 canonical JSON text. Booleans are 0/1.

-- Streams as the outbox folds them from the Stream events (one row per SSF stream).
CREATE TABLE IF NOT EXISTS ssf_streams (
    stream_id            TEXT PRIMARY KEY,
    receiver_id          TEXT NOT NULL,
    aud                  TEXT NOT NULL,
    resources            TEXT NOT NULL,    -- JSON array: the receiver's resource prefixes
    all_missions         INTEGER NOT NULL,
    status               TEXT NOT NULL,    -- enabled | paused | disabled
    reason               TEXT,
    events_delivered     TEXT NOT NULL,    -- JSON array of event-type URIs
    mission_capabilities TEXT NOT NULL,    -- JSON array, e.g. ["authority_changed"]
    signing_alg          TEXT NOT NULL,    -- RS256 | ES256
    delivery_method      TEXT NOT NULL,    -- urn:ietf:rfc:8935 (push) | urn:ietf:rfc:8936 (poll)
    endpoint_url         TEXT,             -- push: the receiver's URL (NULL for poll)
    subject_operations   TEXT NOT NULL,    -- JSON array of {"subject", "included"}, oldest first
    deleted              INTEGER NOT NULL,
    receiver_revoked     INTEGER NOT NULL,
    version              INTEGER NOT NULL, -- the Stream aggregate's version folded so far
    created_at           TEXT NOT NULL,
    updated_at           TEXT NOT NULL,
    position             INTEGER NOT NULL  -- ledger notification id of the last event folded
);
CREATE INDEX IF NOT EXISTS ssf_streams_receiver ON ssf_streams (receiver_id);

-- Each Mission's scope facts, recorded from its approval: the Authority Set then is the widest
-- it ever is (Authority Sets only narrow), so it decides which receivers hear about the Mission.
CREATE TABLE IF NOT EXISTS ssf_missions (
    mission_id    TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL,
    agent         TEXT NOT NULL,
    authority_set TEXT NOT NULL,           -- JSON: the Authority Set as approved
    position      INTEGER NOT NULL
);

-- The queue: one signed SET per (ledger event, event type, stream); deleted when acknowledged
-- (poll) or accepted (push, any 2xx). Dead letters (push) stay, flagged by dead_at.
CREATE TABLE IF NOT EXISTS ssf_queue (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,  -- delivery order (ledger order)
    stream_id       TEXT NOT NULL,
    jti             TEXT NOT NULL UNIQUE,
    txn             TEXT NOT NULL,         -- the ledger event id (shared by its SETs)
    event_type      TEXT NOT NULL,
    kid             TEXT NOT NULL,         -- the signing key (kept published while queued)
    set_jwt         TEXT NOT NULL,         -- the compact JWS, re-sent byte-identical (see signed)
    signed          INTEGER NOT NULL DEFAULT 1, -- 0: set_jwt is still the JWS Signing Input
    position        INTEGER NOT NULL,      -- ledger notification id of the causing event
    mission_id      TEXT,
    mission_version INTEGER,
    control         INTEGER NOT NULL,      -- 1: stream-updated (offered even when not enabled)
    created_at      TEXT NOT NULL,
    offered_at      TEXT,                  -- last time a poll returned it (NULL: never)
    offer_count     INTEGER NOT NULL DEFAULT 0,
    -- push delivery (RFC 8935; mission_ledger.ssf.push): the state of the retry schedule
    attempts        INTEGER NOT NULL DEFAULT 0, -- failed push attempts so far (every kind)
    slow_attempts   INTEGER NOT NULL DEFAULT 0, -- of which counted on the slow schedule
    next_attempt_at TEXT,                  -- not pushed again before this (NULL: at once)
    last_attempt_at TEXT,
    last_error      TEXT,                  -- why the last push attempt failed
    dead_at         TEXT,                  -- dead-lettered at (NULL: live); kept until redelivered
    UNIQUE (stream_id, txn, event_type)
);
CREATE INDEX IF NOT EXISTS ssf_queue_stream ON ssf_queue (stream_id, seq);
CREATE INDEX IF NOT EXISTS ssf_queue_live ON ssf_queue (stream_id, seq) WHERE dead_at IS NULL;
CREATE INDEX IF NOT EXISTS ssf_queue_kid ON ssf_queue (kid);

-- Errors receivers reported: poll setErrs (RFC 8936 §2.4) and push error answers (RFC 8935 §2.3,
-- 401/403); the newest 100 per stream are kept.
CREATE TABLE IF NOT EXISTS ssf_set_errors (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id   TEXT NOT NULL,
    jti         TEXT NOT NULL,
    err         TEXT NOT NULL,
    description TEXT,
    recorded_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ssf_set_errors_stream ON ssf_set_errors (stream_id, id);

-- Push streams' authorization_header values (secrets: never logged, never returned).
CREATE TABLE IF NOT EXISTS ssf_push_secrets (
    stream_id            TEXT PRIMARY KEY,
    authorization_header TEXT NOT NULL,
    updated_at           TEXT NOT NULL
);
