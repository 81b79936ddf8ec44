-- authorization (PostgreSQL): per Mission, what an authorization check needs.
-- Applied by mission_ledger.projections from this file, in the configured schema (search_path);
-- part of the published read-model contract. The table is called mission_authorization:
-- AUTHORIZATION is a reserved word in PostgreSQL. authority_set is the Authority Set as RFC 8785
-- canonical JSON text (authority_hash is the drafts' anchor over it). `state` is the STORED
-- state; a check evaluates expires_at first. The ancestor chain is parent_id, row by row.
CREATE TABLE IF NOT EXISTS mission_authorization (
    mission_id     text COLLATE "C" PRIMARY KEY,
    state          text NOT NULL,
    version        integer NOT NULL,
    expires_at     timestamptz NOT NULL,
    suspend_until  timestamptz,
    agent          text NOT NULL,
    user_id        text NOT NULL,
    parent_id      text COLLATE "C",
    stage          text,
    authority_set  text NOT NULL,
    authority_hash text NOT NULL,
    position       bigint NOT NULL
);
