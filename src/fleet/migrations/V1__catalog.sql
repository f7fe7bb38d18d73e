-- pitr fleet catalog, schema version 1 (docs/FLEET.md is the interface).
-- Every table has an `instance` column; row-level security lets a role
-- write only the rows of the instances pitr_fleet.instance_roles maps it
-- to, and the read role (pitr_fleet_reader) read everything.

CREATE SCHEMA IF NOT EXISTS pitr_fleet;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pitr_fleet_writer') THEN
        CREATE ROLE pitr_fleet_writer NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pitr_fleet_reader') THEN
        CREATE ROLE pitr_fleet_reader NOLOGIN;
    END IF;
END
$$;

-- Filled by the DBA: which login role publishes which instance.
CREATE TABLE pitr_fleet.instance_roles (
    role name NOT NULL,
    instance text NOT NULL CHECK (instance ~ '^[A-Za-z0-9_.-]{1,63}$'),
    PRIMARY KEY (role, instance),
    UNIQUE (instance)
);

-- The instances role `r` may write. SECURITY DEFINER so that a writer
-- need not read the whole mapping; policies pass current_user, which
-- inside a SECURITY DEFINER function would be this function's owner.
CREATE FUNCTION pitr_fleet.writable_instances(r name) RETURNS SETOF text
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pitr_fleet
    AS $$ SELECT instance FROM pitr_fleet.instance_roles WHERE role = r $$;

CREATE TABLE pitr_fleet.instances (
    instance text PRIMARY KEY CHECK (instance ~ '^[A-Za-z0-9_.-]{1,63}$'),
    labels jsonb NOT NULL DEFAULT '{}',
    version text NOT NULL,
    last_seen timestamptz NOT NULL,
    -- The local catalog's commit sequence number the rows below reflect.
    published_seq bigint NOT NULL DEFAULT 0,
    published_at timestamptz
);

CREATE TABLE pitr_fleet.databases (
    instance text NOT NULL REFERENCES pitr_fleet.instances ON DELETE CASCADE,
    kind text NOT NULL CHECK (kind IN ('postgres', 'sqlite', 'snapshot')),
    name text NOT NULL,
    newest_restorable timestamptz,
    seq bigint NOT NULL,
    PRIMARY KEY (instance, kind, name)
);

CREATE TABLE pitr_fleet.backups (
    instance text NOT NULL,
    kind text NOT NULL,
    database text NOT NULL,
    id text NOT NULL,
    started timestamptz,
    finished timestamptz,
    start_lsn pg_lsn,
    stop_lsn pg_lsn,
    timeline integer,
    bytes bigint,
    stored_bytes bigint,
    restorable boolean NOT NULL,
    incremental_parent text,
    seq bigint NOT NULL,
    PRIMARY KEY (instance, kind, database, id),
    FOREIGN KEY (instance, kind, database) REFERENCES pitr_fleet.databases ON DELETE CASCADE
);

-- Per timeline for PostgreSQL; timeline 0 for SQLite.
CREATE TABLE pitr_fleet.restore_windows (
    instance text NOT NULL,
    kind text NOT NULL,
    database text NOT NULL,
    timeline integer NOT NULL,
    earliest timestamptz,
    latest timestamptz,
    end_lsn pg_lsn,
    seq bigint NOT NULL,
    PRIMARY KEY (instance, kind, database, timeline),
    FOREIGN KEY (instance, kind, database) REFERENCES pitr_fleet.databases ON DELETE CASCADE
);

CREATE TABLE pitr_fleet.destinations (
    instance text NOT NULL REFERENCES pitr_fleet.instances ON DELETE CASCADE,
    name text NOT NULL,
    kind text NOT NULL,
    seq bigint NOT NULL,
    PRIMARY KEY (instance, name)
);

CREATE TABLE pitr_fleet.cids (
    instance text NOT NULL,
    destination text NOT NULL,
    object text NOT NULL,
    cid text NOT NULL,
    seq bigint NOT NULL,
    PRIMARY KEY (instance, destination, object),
    FOREIGN KEY (instance, destination) REFERENCES pitr_fleet.destinations ON DELETE CASCADE
);

CREATE TABLE pitr_fleet.test_restores (
    instance text NOT NULL,
    kind text NOT NULL,
    database text NOT NULL,
    started timestamptz NOT NULL,
    ok boolean NOT NULL,
    detail text,
    seq bigint NOT NULL,
    PRIMARY KEY (instance, kind, database, started),
    FOREIGN KEY (instance, kind, database) REFERENCES pitr_fleet.databases ON DELETE CASCADE
);

CREATE TABLE pitr_fleet.health_checks (
    instance text NOT NULL REFERENCES pitr_fleet.instances ON DELETE CASCADE,
    id text NOT NULL,
    ok boolean NOT NULL,
    summary text NOT NULL,
    seq bigint NOT NULL,
    PRIMARY KEY (instance, id)
);

CREATE INDEX ON pitr_fleet.backups (instance, kind, database, finished);
CREATE INDEX ON pitr_fleet.test_restores (instance, kind, database, started);

-- The interface version other programs check (docs/FLEET.md).
CREATE VIEW pitr_fleet.schema_version AS SELECT 1 AS version;

GRANT USAGE ON SCHEMA pitr_fleet TO pitr_fleet_writer, pitr_fleet_reader;
GRANT SELECT ON pitr_fleet.schema_version TO pitr_fleet_writer, pitr_fleet_reader;
GRANT EXECUTE ON FUNCTION pitr_fleet.writable_instances(name) TO pitr_fleet_writer;
GRANT SELECT ON pitr_fleet.instance_roles TO pitr_fleet_reader;

-- Refuses an UPDATE or DELETE of another instance's row with an error
-- (SQLSTATE 42501) rather than skipping it silently, as a policy's USING
-- would. The table's owner (the DBA, and foreign-key cascades, which run
-- as the owner) passes.
CREATE FUNCTION pitr_fleet.refuse_foreign_rows() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pitr_fleet
    AS $$
BEGIN
    IF NOT pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = TG_RELID), 'MEMBER')
       AND OLD.instance NOT IN (SELECT pitr_fleet.writable_instances(current_user)) THEN
        RAISE EXCEPTION 'role % may not % rows of fleet instance %', current_user,
            lower(TG_OP), OLD.instance
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Each instance writes only its own rows; pitr_fleet.instance_roles maps roles to instances.';
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END
$$;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['instances', 'databases', 'backups', 'restore_windows',
                             'destinations', 'cids', 'test_restores', 'health_checks']
    LOOP
        EXECUTE format('ALTER TABLE pitr_fleet.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE pitr_fleet.%I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON pitr_fleet.%I TO pitr_fleet_writer', t);
        EXECUTE format('GRANT SELECT ON pitr_fleet.%I TO pitr_fleet_reader', t);
        -- Writers read every row (an UPDATE or DELETE must see a row for
        -- the trigger to refuse it loudly); they insert, and update into,
        -- only their own instances' rows, and the trigger refuses changing
        -- or deleting anyone else's.
        EXECUTE format(
            'CREATE POLICY writer_read ON pitr_fleet.%I FOR SELECT TO pitr_fleet_writer USING (true)', t);
        EXECUTE format(
            'CREATE POLICY writer_insert ON pitr_fleet.%I FOR INSERT TO pitr_fleet_writer '
            'WITH CHECK (instance IN (SELECT pitr_fleet.writable_instances(current_user)))', t);
        EXECUTE format(
            'CREATE POLICY writer_update ON pitr_fleet.%I FOR UPDATE TO pitr_fleet_writer '
            'USING (true) WITH CHECK (instance IN (SELECT pitr_fleet.writable_instances(current_user)))', t);
        EXECUTE format(
            'CREATE POLICY writer_delete ON pitr_fleet.%I FOR DELETE TO pitr_fleet_writer USING (true)', t);
        EXECUTE format(
            'CREATE TRIGGER refuse_foreign_rows BEFORE UPDATE OR DELETE ON pitr_fleet.%I '
            'FOR EACH ROW EXECUTE FUNCTION pitr_fleet.refuse_foreign_rows()', t);
        EXECUTE format(
            'CREATE POLICY reader_read ON pitr_fleet.%I FOR SELECT TO pitr_fleet_reader USING (true)', t);
    END LOOP;
END
$$;
