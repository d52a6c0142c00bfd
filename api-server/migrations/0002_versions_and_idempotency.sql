-- Every user carries a version, bumped by every UPDATE whoever runs it (like the NOTIFY
-- trigger, a DBA's psql write counts too). It is the user's ETag and the guard of a
-- conditional write (If-Match). Adding a column with a constant default rewrites nothing.
ALTER TABLE users ADD COLUMN version bigint NOT NULL DEFAULT 1;

CREATE FUNCTION users_bump_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := OLD.version + 1;
    RETURN NEW;
END;
$$;

CREATE TRIGGER users_versioned
    BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION users_bump_version();

-- Idempotency-Key of POST /users: the first request with a key records the response it
-- got; a repeat within 24 h is answered from here. The row is written in the transaction
-- that creates the user, so it exists exactly when the user does, and a second request with
-- the key waits on the first one's row lock instead of creating a twin.
CREATE TABLE idempotency_keys (
    -- The token's subject when authentication is on ('' when off): one client cannot
    -- replay, or collide with, another client's key.
    scope      text        NOT NULL,
    key        text        NOT NULL CONSTRAINT idempotency_keys_key_length CHECK (char_length(key) BETWEEN 1 AND 255),
    -- The validated request body, to tell a repeat from a different request with the key.
    request    jsonb       NOT NULL,
    status     smallint,
    location   text,
    response   bytea,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);

-- Expired keys are deleted in small batches by created_at (see db/idempotency.rs).
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
