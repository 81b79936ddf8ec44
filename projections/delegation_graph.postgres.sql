-- delegation_graph (PostgreSQL): one row per delegation edge, parent Mission -> child Mission.
-- Applied by mission_ledger.projections from this file, in the configured schema (search_path);
-- part of the published read-model contract. justifying_entry is the index of the parent's
-- Authority Set entry that permitted the child at delegation time.
CREATE TABLE IF NOT EXISTS delegation_graph (
    parent_id        text COLLATE "C" NOT NULL,
    child_id         text COLLATE "C" NOT NULL,
    child_agent      text NOT NULL,
    justifying_entry integer NOT NULL,
    created_at       timestamptz NOT NULL,
    PRIMARY KEY (parent_id, child_id)
);
CREATE INDEX IF NOT EXISTS delegation_graph_child ON delegation_graph (child_id);
