-- Consent cannot race: the outbound queue enforces consent itself, a STOP cancels what it must, and
-- the consent history cannot be rewritten.

-- Only a consent confirmation may bypass consent and quiet hours, and a confirmation always does:
-- one queued as non-compliance would be held back from the opted-out user it confirms.
ALTER TABLE message_queue ADD CONSTRAINT message_queue_compliance_is_confirmation
    CHECK (compliance = (reason IN ('opt_out_confirmation', 'opt_in_confirmation')));

-- A queued message's user is its conversation's user. One composite key checks that and replaces the
-- three separate keys (tenant, conversation, user): one check per queued row instead of three, and no
-- FOR KEY SHARE on the tenant's single row from every insert (see 0005). The price is one more entry
-- in a unique index per new conversation (measured: +84 bytes of WAL, 529 -> 613, and about +1.5 us
-- per row inserted; queue inserts got ~10% faster); conversation updates stay heap-only (no updated
-- column is indexed). Deleting a user or tenant still removes its queue: both cascade to conversations.
ALTER TABLE conversations ADD CONSTRAINT conversations_tenant_id_id_user_id_key UNIQUE (tenant_id, id, user_id);
ALTER TABLE message_queue
    DROP CONSTRAINT message_queue_tenant_id_fkey,
    DROP CONSTRAINT message_queue_conversation_id_fkey,
    DROP CONSTRAINT message_queue_user_id_fkey,
    ADD CONSTRAINT message_queue_conversation_fkey FOREIGN KEY (tenant_id, conversation_id, user_id)
        REFERENCES conversations (tenant_id, id, user_id) ON DELETE CASCADE;
-- The cascade from a conversation, and the cancellation by user below, each have an index:
-- message_queue_conversation (conversation_id, id) and message_queue_user (user_id, id).

-- Nothing but the opt-out confirmation may be queued, or put back in line to be sent, for a user who
-- opted out. An opt-in confirmation to an opted-out user is refused too: it is always stale (a START
-- that a later STOP overrode).
--
-- The check reads the user's consent under FOR SHARE. A consent change is an UPDATE of the user's row,
-- which takes FOR NO KEY UPDATE; FOR SHARE conflicts with it (FOR KEY SHARE, what a foreign key check
-- takes, does not), so the two cannot interleave:
--  * the STOP first: this read waits for the STOP to commit, then sees the row's new version (READ
--    COMMITTED locking reads follow the update) and refuses;
--  * the queue write first: the STOP's UPDATE waits until this transaction commits, and the STOP's
--    cancellation (next trigger) then sees the committed row and cancels it.
-- FOR SHARE rather than an exclusive lock: concurrent queue writes for one user do not wait for each
-- other, and nothing here upgrades the lock (the agents lock users FOR NO KEY UPDATE up front).
CREATE OR REPLACE FUNCTION parley_queue_respects_opt_out() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    state text;
BEGIN
    IF NEW.reason = 'opt_out_confirmation' THEN
        RETURN NEW;
    END IF;
    -- Updates that take a row out of line (sent, failed, canceled) or keep it in flight always pass:
    -- a send already handed to the provider must still be recorded.
    IF TG_OP = 'UPDATE' AND NOT (NEW.status = 'queued'
                                 OR (NEW.status = 'sending' AND OLD.status IS DISTINCT FROM 'sending')) THEN
        RETURN NEW;
    END IF;
    SELECT consent_state INTO state FROM users WHERE id = NEW.user_id FOR SHARE;
    IF state = 'opted_out' THEN
        RAISE EXCEPTION 'user % opted out', NEW.user_id USING ERRCODE = 'check_violation',
            CONSTRAINT = 'message_queue_opted_out';
    END IF;
    RETURN NEW;
END $$;
DROP TRIGGER message_queue_opt_out ON message_queue;
CREATE TRIGGER message_queue_opt_out BEFORE INSERT OR UPDATE ON message_queue
    FOR EACH ROW EXECUTE FUNCTION parley_queue_respects_opt_out();

-- An opt-out, from any writer (keyword, classifier, operator), cancels in its own transaction every
-- message still waiting for that user but its confirmation, and says which change canceled it. The
-- user's row is locked first, so this holds even for a writer that did not update the user (every
-- current writer does, in the same statement, and already holds the lock).
CREATE FUNCTION parley_opt_out_cancels_queue() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM users WHERE id = NEW.user_id FOR NO KEY UPDATE;
    UPDATE message_queue
    SET status = 'canceled', updated_at = now(),
        last_error = format('canceled: consent change %s opted the user out (%s)', NEW.id, NEW.source)
    WHERE user_id = NEW.user_id AND tenant_id = NEW.tenant_id AND status = 'queued'
      AND reason <> 'opt_out_confirmation';
    RETURN NULL;
END $$;
CREATE TRIGGER consent_changes_opt_out_cancels_queue AFTER INSERT ON consent_changes
    FOR EACH ROW WHEN (NEW.state = 'opted_out') EXECUTE FUNCTION parley_opt_out_cancels_queue();

-- The consent history is evidence: rows are never rewritten or removed, except by erasing their user
-- or tenant (the cascade deletes them once the user or tenant row is gone). Erasing a message keeps
-- the change and only unlinks it: the ON DELETE SET NULL cascade is an UPDATE, allowed when it changes
-- message_id alone, to NULL, and that message no longer exists.
CREATE FUNCTION parley_consent_changes_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF NOT EXISTS (SELECT 1 FROM users WHERE id = OLD.user_id)
           OR NOT EXISTS (SELECT 1 FROM tenants WHERE id = OLD.tenant_id) THEN
            RETURN OLD;
        END IF;
    ELSIF NEW.message_id IS NULL AND OLD.message_id IS NOT NULL
          AND to_jsonb(NEW) - 'message_id' = to_jsonb(OLD) - 'message_id'
          AND NOT EXISTS (SELECT 1 FROM messages WHERE id = OLD.message_id) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'consent_changes rows are append-only' USING ERRCODE = 'restrict_violation';
END $$;
CREATE TRIGGER consent_changes_append_only BEFORE UPDATE OR DELETE ON consent_changes
    FOR EACH ROW EXECUTE FUNCTION parley_consent_changes_append_only();
