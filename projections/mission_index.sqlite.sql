-- mission_index (SQLite): one row per Mission, for listing and searching Missions.
-- Applied by mission_ledger.projections from this file; part of the published read-model contract.
-- Timestamps are UTC text of fixed width, 'YYYY-MM-DDTHH:MM:SS.ffffffZ', so that text order is
-- time order (comparisons and indexes on them work). `state` is the STORED state: a live Mission
-- (active, suspended) whose expires_at has passed reads as expired (see README.md).
CREATE TABLE IF NOT EXISTS mission_index (
    mission_id    TEXT PRIMARY KEY,
    state         TEXT NOT NULL,
    version       INTEGER NOT NULL,
    user_id       TEXT NOT NULL,
    agent         TEXT NOT NULL,
    parent_id     TEXT,
    expires_at    TEXT NOT NULL,
    suspend_until TEXT,
    on_expiry     TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    position      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS mission_index_state ON mission_index (state, expires_at);
CREATE INDEX IF NOT EXISTS mission_index_user ON mission_index (user_id, created_at, mission_id);
CREATE INDEX IF NOT EXISTS mission_index_agent ON mission_index (agent, created_at, mission_id);
CREATE INDEX IF NOT EXISTS mission_index_parent ON mission_index (parent_id);
CREATE INDEX IF NOT EXISTS mission_index_expires ON mission_index (expires_at);
CREATE INDEX IF NOT EXISTS mission_index_order ON mission_index (created_at, mission_id);
