-- lead_actions rows are immutable (0002), but their message_id is ON DELETE SET NULL: deleting a
-- conversation (or a channel, whose conversations cascade) whose messages an action names made the
-- cascade's UPDATE fail with "lead_actions rows are immutable", so nothing could be erased. The one
-- update a history row allows is the one that cascade makes: message_id set to NULL because that
-- message is gone, every other column as it was. consent_changes (0007) follows the same rule, now
-- written once here for both.
CREATE FUNCTION parley_unlinks_erased_message(old jsonb, new jsonb) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT new -> 'message_id' = 'null'::jsonb AND old -> 'message_id' <> 'null'::jsonb
           AND new - 'message_id' = old - 'message_id'
           AND NOT EXISTS (SELECT 1 FROM messages WHERE id = (old ->> 'message_id')::bigint)
$$;

CREATE OR REPLACE FUNCTION parley_consent_changes_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF NOT EXISTS (SELECT 1 FROM users WHERE id = OLD.user_id)
           OR NOT EXISTS (SELECT 1 FROM tenants WHERE id = OLD.tenant_id) THEN
            RETURN OLD;
        END IF;
    ELSIF parley_unlinks_erased_message(to_jsonb(OLD), to_jsonb(NEW)) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'consent_changes rows are append-only' USING ERRCODE = 'restrict_violation';
END $$;

CREATE FUNCTION parley_lead_actions_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF parley_unlinks_erased_message(to_jsonb(OLD), to_jsonb(NEW)) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'lead_actions rows are immutable' USING ERRCODE = 'restrict_violation';
END $$;
DROP TRIGGER lead_actions_immutable ON lead_actions;
CREATE TRIGGER lead_actions_immutable BEFORE UPDATE ON lead_actions
    FOR EACH ROW EXECUTE FUNCTION parley_lead_actions_immutable();
