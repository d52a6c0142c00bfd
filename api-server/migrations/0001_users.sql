-- Users. The code matches on the constraint names (see error.rs), so keep them stable.
CREATE TABLE users (
    id         uuid        PRIMARY KEY,
    name       text        NOT NULL CONSTRAINT users_name_length CHECK (char_length(name) BETWEEN 1 AND 100),
    email      text        NOT NULL CONSTRAINT users_email_length CHECK (char_length(email) BETWEEN 3 AND 254),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Emails are unique regardless of case.
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

-- Every change to an existing row tells every replica to evict it from its own cache. A
-- trigger (rather than application code) makes the NOTIFY part of the writing transaction
-- whoever writes, including a DBA with psql; it is delivered only if that transaction commits.
CREATE FUNCTION users_notify_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('users_changed', OLD.id::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER users_changed
    AFTER UPDATE OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION users_notify_change();

-- A TRUNCATE cannot name rows: '*' asks every replica to flush its whole cache.
CREATE FUNCTION users_notify_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('users_changed', '*');
    RETURN NULL;
END;
$$;

CREATE TRIGGER users_truncated
    AFTER TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION users_notify_truncate();
