-- User events (issue 13): a transactional outbox. Each committed write of a user adds one
-- row here in the same statement (a data-modifying CTE, db/outbox.rs), so a row exists
-- exactly when its change committed. One relay at a time (the holder of an advisory lock,
-- events/relay.rs) publishes rows to Kafka in id order and deletes them once the broker
-- acknowledged them. Written only while EVENTS_KAFKA_BROKERS is set; without it the table
-- stays empty and costs nothing.
--
-- Order: ids come from a sequence at insert time, not at commit, so rows of different users
-- may commit out of id order; the relay reads the smallest ids left and deletes what it
-- published, so a late commit is picked up by a later batch rather than skipped. For one
-- user, the row lock of the change makes its next write wait for this commit, so its
-- outbox ids grow in commit order.
CREATE TABLE outbox (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The CloudEvents id: kept across retries, so a consumer drops duplicates by it.
    event_id    uuid        NOT NULL DEFAULT gen_random_uuid(),
    kind        text        NOT NULL CONSTRAINT outbox_kind CHECK (kind IN ('created', 'updated', 'deleted')),
    user_id     uuid        NOT NULL,
    -- The user as committed (NULL for deleted); the relay serialises it as the API does.
    name        text,
    email       text,
    created_at  timestamptz,
    updated_at  timestamptz,
    version     bigint,
    -- The transaction's time (now()), which is also the user's updated_at.
    occurred_at timestamptz NOT NULL DEFAULT now()
);

-- A queue: rows are inserted and soon deleted. Vacuum it after every thousand dead rows
-- instead of after a fifth of the table, so its index stays small under a steady stream.
ALTER TABLE outbox SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
                        autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 1000);
