-- lead_actions rows are immutable (0002), but their message_id is ON DELETE SET NULL: deleting a
-- conversation (or a channel, whose conversations cascade) whose messages an action names made the
-- cascade's UPDATE fail with "lead_actions rows are immutable", so nothing could be erased. The one
-- update allowed is the one that cascade makes: message_id set to NULL because that message is gone,
-- every other column as it was (the same rule consent_changes follows since 0007).
CREATE FUNCTION parley_lead_actions_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.message_id IS NULL AND OLD.message_id IS NOT NULL
       AND to_jsonb(NEW) - 'message_id' = to_jsonb(OLD) - 'message_id'
       AND NOT EXISTS (SELECT 1 FROM messages WHERE id = OLD.message_id) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'lead_actions rows are immutable' USING ERRCODE = 'restrict_violation';
END $$;
DROP TRIGGER lead_actions_immutable ON lead_actions;
CREATE TRIGGER lead_actions_immutable BEFORE UPDATE ON lead_actions
    FOR EACH ROW EXECUTE FUNCTION parley_lead_actions_immutable();
