-- One group-commit statement stores every inbound message (services/inbound/queries.sql,
-- insert_inbound_batch). It resolves senders and decides keyword consent changes from its snapshot and
-- from the user rows it locks. When another transaction committed a row the statement could not see
-- (the same first-time sender created by another lane or process, a redelivered keyword stored
-- concurrently), its decisions would rest on a stale view: it calls this to fail as a serialization
-- failure instead, and the batcher runs it again on a fresh snapshot.
CREATE FUNCTION parley_retry_if(conflict boolean, reason text) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF conflict THEN
        RAISE EXCEPTION 'concurrent write: %', reason USING ERRCODE = 'serialization_failure';
    END IF;
    RETURN true;
END $$;
