-- delegation_graph (SQLite): one row per delegation edge, parent Mission -> child Mission.
-- Applied by mission_ledger.projections from this file; part of the published read-model contract.
-- justifying_entry is the index of the parent's Authority Set entry that permitted the child at
-- delegation time. created_at: UTC text 'YYYY-MM-DDTHH:MM:SS.ffffffZ' (text order = time order).
CREATE TABLE IF NOT EXISTS delegation_graph (
    parent_id        TEXT NOT NULL,
    child_id         TEXT NOT NULL,
    child_agent      TEXT NOT NULL,
    justifying_entry INTEGER NOT NULL,
    created_at       TEXT NOT NULL,
    PRIMARY KEY (parent_id, child_id)
);
CREATE INDEX IF NOT EXISTS delegation_graph_child ON delegation_graph (child_id);
