-- authorization (SQLite): per Mission, what an authorization check needs.
-- Applied by mission_ledger.projections from this file; part of the published read-model contract.
-- The table is called mission_authorization: AUTHORIZATION is a reserved word in SQL (PostgreSQL),
-- and the table name is the same on both backends. authority_set is the Authority Set as
-- RFC 8785 canonical JSON text (authority_hash is the drafts' anchor over it). `state` is the
-- STORED state; a check evaluates expires_at first. The ancestor chain is parent_id, row by row.
-- Timestamps: UTC text 'YYYY-MM-DDTHH:MM:SS.ffffffZ' (text order = time order).
CREATE TABLE IF NOT EXISTS mission_authorization (
    mission_id     TEXT PRIMARY KEY,
    state          TEXT NOT NULL,
    version        INTEGER NOT NULL,
    expires_at     TEXT NOT NULL,
    suspend_until  TEXT,
    agent          TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    parent_id      TEXT,
    stage          TEXT,
    authority_set  TEXT NOT NULL,
    authority_hash TEXT NOT NULL,
    position       INTEGER NOT NULL
);
