-- Twilio reaches a business at more than E.164 numbers: a short code (5 or 6 digits), an alphanumeric
-- sender ID (1 to 11 ASCII letters, digits and spaces, at least one letter) and an RCS sender
-- ('rcs:' and its id). services/channels/twilio.py normalises a `To` to one of these forms, all on the
-- twilio_sms kind (RCS senders share their Messaging Service, SMS fallback and opt-outs with SMS);
-- before this, materialising such an address from the account's catch-all failed this CHECK (a 500).
-- users.phone keeps its E.164 CHECK: phone.to_e164 only ever returns what it admits.
-- 0001 left the CHECK unnamed, and since it reads kind too PostgreSQL named it after the table
-- (channels_check or channels_check1, by declaration order): found by what it checks, and named now.
DO $$
DECLARE name text;
BEGIN
    SELECT conname INTO STRICT name FROM pg_constraint
    WHERE conrelid = 'channels'::regclass AND contype = 'c' AND pg_get_constraintdef(oid) LIKE '%address%';
    EXECUTE format('ALTER TABLE channels DROP CONSTRAINT %I', name);
END $$;
ALTER TABLE channels ADD CONSTRAINT channels_address_check CHECK (
    address = '*'
    OR address ~ '^\+[1-9][0-9]{6,14}$'
    OR (kind = 'whatsapp_cloud' AND address ~ '^[0-9]+$')
    OR (kind = 'twilio_sms' AND (
        address ~ '^[0-9]{5,6}$'
        OR (address ~ '^[A-Za-z0-9 ]{1,11}$' AND address ~ '[A-Za-z]')
        OR address ~ '^rcs:[A-Za-z0-9_.+-]{1,100}$'))
);
