-- Ferric's schema, for SQLite and PostgreSQL alike: only types both know,
-- UUIDs and JSON as TEXT, timestamps as BIGINT unix microseconds.
--
-- `data` holds the whole record as JSON; the other columns copy the fields
-- that are filtered, sorted or unique. `id` orders records by creation (the
-- default sort and the tie-breaker of paging). The two databases share no
-- syntax for an auto-increment column, so the INSERT assigns MAX(id) + 1 and
-- retries on a clash.
--
-- Every index costs each INSERT a page write, so columns that are mostly
-- NULL get partial indexes (a query `col = $1` can use them), and columns of
-- a handful of values (driver, conductor_group, maintenance) get none.

CREATE TABLE nodes (
    id INTEGER PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,
    name TEXT,
    driver TEXT NOT NULL,
    provision_state TEXT NOT NULL,
    maintenance BOOLEAN NOT NULL,
    instance_uuid TEXT,
    resource_class TEXT,
    conductor_group TEXT NOT NULL,
    owner TEXT,
    lessee TEXT,
    shard TEXT,
    retired BOOLEAN NOT NULL,
    -- The conductor holding the node's exclusive lock; not in `data`.
    reservation TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT,
    provision_updated_at BIGINT,
    data TEXT NOT NULL
);

CREATE UNIQUE INDEX nodes_name ON nodes (name) WHERE name IS NOT NULL;
CREATE UNIQUE INDEX nodes_instance_uuid ON nodes (instance_uuid) WHERE instance_uuid IS NOT NULL;
CREATE INDEX nodes_provision_state ON nodes (provision_state);
CREATE INDEX nodes_reservation ON nodes (reservation) WHERE reservation IS NOT NULL;
CREATE INDEX nodes_resource_class ON nodes (resource_class) WHERE resource_class IS NOT NULL;
CREATE INDEX nodes_owner ON nodes (owner) WHERE owner IS NOT NULL;
CREATE INDEX nodes_lessee ON nodes (lessee) WHERE lessee IS NOT NULL;
CREATE INDEX nodes_shard ON nodes (shard) WHERE shard IS NOT NULL;

CREATE TABLE ports (
    id INTEGER PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,
    address TEXT NOT NULL UNIQUE,
    name TEXT,
    node_uuid TEXT NOT NULL REFERENCES nodes (uuid) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    updated_at BIGINT,
    data TEXT NOT NULL
);

CREATE UNIQUE INDEX ports_name ON ports (name) WHERE name IS NOT NULL;
CREATE INDEX ports_node_uuid ON ports (node_uuid);

CREATE TABLE conductors (
    hostname TEXT NOT NULL PRIMARY KEY,
    conductor_group TEXT NOT NULL,
    -- JSON array of driver names.
    drivers TEXT NOT NULL,
    online BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL,
    -- The last heartbeat.
    updated_at BIGINT
);
