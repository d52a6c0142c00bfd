-- Invalidation in bulk (issue 10 item 12). The per-row trigger of 0001 sent one NOTIFY per
-- changed row, so an UPDATE of 100k rows queued 100k notifications that every replica
-- handled one Redis round trip at a time; its heartbeat, queued behind them, timed out and
-- every replica dropped its LISTEN connection and flushed at once.
--
-- Now one trigger per statement sees every changed row in a transition table and sends
--   * the ids in batches: '<id>,<id>,...', at most 200 per payload (37 bytes an id with
--     its comma, 7.4 kB, under NOTIFY's 8000-byte limit); a replica evicts a batch with one
--     pipelined Redis call;
--   * above 10,000 rows in one statement, '*' (flush) instead. Past that size evicting costs
--     more than it saves: 50+ notifications on the cluster-wide NOTIFY queue, written at
--     commit under its lock, for a statement that touched a large share of what any replica
--     caches anyway; one flush is a single notification and an in-process epoch bump.
-- A single id is a batch of one, so payloads of 0001 keep their meaning.
-- Transition tables need one trigger per event (UPDATE and DELETE separately).

DROP TRIGGER users_changed ON users;
DROP FUNCTION users_notify_change();

CREATE FUNCTION users_notify_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    batch text;
BEGIN
    -- OFFSET stops reading the transition table at the threshold instead of counting it all.
    IF EXISTS (SELECT 1 FROM old_rows OFFSET 10000) THEN
        PERFORM pg_notify('users_changed', '*');
        RETURN NULL;
    END IF;
    FOR batch IN
        SELECT string_agg(id::text, ',')
        FROM (SELECT id, (row_number() OVER () - 1) / 200 AS n FROM old_rows) numbered
        GROUP BY n
    LOOP
        PERFORM pg_notify('users_changed', batch);
    END LOOP;
    RETURN NULL;
END;
$$;

CREATE TRIGGER users_changed
    AFTER UPDATE ON users
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION users_notify_changes();

CREATE TRIGGER users_deleted
    AFTER DELETE ON users
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION users_notify_changes();
