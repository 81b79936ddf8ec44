-- ssf_outbox (PostgreSQL): the SSF transmitter's delivery state. NOT a view: a durable queue of
-- signed Security Event Tokens; `mission-ledger rebuild` never drops or replays it (rebuilding
-- would re-send history with new jtis). Applied by mission_ledger.ssf.outbox_store from this
-- file, in the configured schema (search_path), next to its tracking table ssf_outbox_tracking.
-- Ids are text COLLATE "C" (byte order, as on SQLite). JSON columns hold RFC 8785 canonical JSON
-- text.

-- Streams as the outbox folds them from the Stream events (one row per SSF stream).
CREATE TABLE IF NOT EXISTS ssf_streams (
    stream_id            text COLLATE "C" PRIMARY KEY,
    receiver_id          text COLLATE "C" NOT NULL,
    aud                  text NOT NULL,
    resources            text NOT NULL,    -- JSON array: the receiver's resource prefixes
    all_missions         boolean NOT NULL,
    status               text NOT NULL,    -- enabled | paused | disabled
    reason               text,
    events_delivered     text NOT NULL,    -- JSON array of event-type URIs
    mission_capabilities text NOT NULL,    -- JSON array, e.g. ["authority_changed"]
    signing_alg          text NOT NULL,    -- RS256 | ES256
    delivery_method      text NOT NULL,    -- urn:ietf:rfc:8935 (push) | urn:ietf:rfc:8936 (poll)
    endpoint_url         text,             -- push: the receiver's URL (NULL for poll)
    subject_operations   text NOT NULL,    -- JSON array of {"subject", "included"}, oldest first
    deleted              boolean NOT NULL,
    receiver_revoked     boolean NOT NULL,
    version              integer NOT NULL, -- the Stream aggregate's version folded so far
    created_at           timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL,
    position             bigint NOT NULL   -- ledger notification id of the last event folded
);
CREATE INDEX IF NOT EXISTS ssf_streams_receiver ON ssf_streams (receiver_id);

-- Each Mission's scope facts, recorded from its approval: the Authority Set then is the widest
-- it ever is (Authority Sets only narrow), so it decides which receivers hear about the Mission.
CREATE TABLE IF NOT EXISTS ssf_missions (
    mission_id    text COLLATE "C" PRIMARY KEY,
    user_id       text NOT NULL,
    agent         text NOT NULL,
    authority_set text NOT NULL,           -- JSON: the Authority Set as approved
    position      bigint NOT NULL
);

-- The queue: one signed SET per (ledger event, event type, stream); deleted when acknowledged
-- (poll) or accepted (push, any 2xx). Dead letters (push) stay, flagged by dead_at.
CREATE TABLE IF NOT EXISTS ssf_queue (
    seq             bigserial PRIMARY KEY, -- delivery order (ledger order)
    stream_id       text COLLATE "C" NOT NULL,
    jti             text COLLATE "C" NOT NULL UNIQUE,
    txn             text COLLATE "C" NOT NULL, -- the ledger event id (shared by its SETs)
    event_type      text NOT NULL,
    kid             text NOT NULL,         -- the signing key (kept published while queued)
    set_jwt         text NOT NULL,         -- the compact JWS, re-sent byte-identical (see signed)
    signed          boolean NOT NULL DEFAULT TRUE, -- FALSE: set_jwt is still the JWS Signing Input
    position        bigint NOT NULL,       -- ledger notification id of the causing event
    mission_id      text COLLATE "C",
    mission_version integer,
    control         boolean NOT NULL,      -- stream-updated (offered even when not enabled)
    created_at      timestamptz NOT NULL,
    offered_at      timestamptz,           -- last time a poll returned it (NULL: never)
    offer_count     integer NOT NULL DEFAULT 0,
    -- push delivery (RFC 8935; mission_ledger.ssf.push): the state of the retry schedule
    attempts        integer NOT NULL DEFAULT 0, -- failed push attempts so far (every kind)
    slow_attempts   integer NOT NULL DEFAULT 0, -- of which counted on the slow schedule
    next_attempt_at timestamptz,           -- not pushed again before this (NULL: at once)
    last_attempt_at timestamptz,
    last_error      text,                  -- why the last push attempt failed
    dead_at         timestamptz,           -- dead-lettered at (NULL: live); kept until redelivered
    UNIQUE (stream_id, txn, event_type)
);
CREATE INDEX IF NOT EXISTS ssf_queue_stream ON ssf_queue (stream_id, seq);
CREATE INDEX IF NOT EXISTS ssf_queue_live ON ssf_queue (stream_id, seq) WHERE dead_at IS NULL;
CREATE INDEX IF NOT EXISTS ssf_queue_kid ON ssf_queue (kid);

-- Errors receivers reported: poll setErrs (RFC 8936 §2.4) and push error answers (RFC 8935 §2.3,
-- 401/403); the newest 100 per stream are kept.
CREATE TABLE IF NOT EXISTS ssf_set_errors (
    id          bigserial PRIMARY KEY,
    stream_id   text COLLATE "C" NOT NULL,
    jti         text NOT NULL,
    err         text NOT NULL,
    description text,
    recorded_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS ssf_set_errors_stream ON ssf_set_errors (stream_id, id);

-- Push streams' authorization_header values (secrets: never logged, never returned).
CREATE TABLE IF NOT EXISTS ssf_push_secrets (
    stream_id            text COLLATE "C" PRIMARY KEY,
    authorization_header text NOT NULL,
    updated_at           timestamptz NOT NULL
);
