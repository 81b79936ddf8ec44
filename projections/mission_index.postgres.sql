-- mission_index (PostgreSQL): one row per Mission, for listing and searching Missions.
-- Applied by mission_ledger.projections from this file, in the configured schema (search_path);
-- part of the published read-model contract. `state` is the STORED state: a live Mission
-- (active, suspended) whose expires_at has passed reads as expired (see README.md). Ids are
-- text COLLATE "C": byte order, the same order as on SQLite.
CREATE TABLE IF NOT EXISTS mission_index (
    mission_id    text COLLATE "C" PRIMARY KEY,
    state         text NOT NULL,
    version       integer NOT NULL,
    user_id       text NOT NULL,
    agent         text NOT NULL,
    parent_id     text COLLATE "C",
    expires_at    timestamptz NOT NULL,
    suspend_until timestamptz,
    on_expiry     text,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    position      bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS mission_index_state ON mission_index (state, expires_at);
CREATE INDEX IF NOT EXISTS mission_index_user ON mission_index (user_id, created_at, mission_id);
CREATE INDEX IF NOT EXISTS mission_index_agent ON mission_index (agent, created_at, mission_id);
CREATE INDEX IF NOT EXISTS mission_index_parent ON mission_index (parent_id);
CREATE INDEX IF NOT EXISTS mission_index_expires ON mission_index (expires_at);
CREATE INDEX IF NOT EXISTS mission_index_order ON mission_index (created_at, mission_id);
