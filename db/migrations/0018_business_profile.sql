-- Issue 12 §1: the business profile (one row per tenant; a tenant without one has the defaults, its
-- business name being tenants.name) and its FAQ. Written by services/profile.py only.
CREATE TABLE business_profiles (
    tenant_id             bigint PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    business_name         text CHECK (length(business_name) BETWEEN 1 AND 200),
    industry              text CHECK (length(industry) BETWEEN 1 AND 200),
    primary_service       text CHECK (length(primary_service) BETWEEN 1 AND 200),
    booking_link          text CHECK (length(booking_link) <= 2000 AND booking_link ~ '^https?://[^\s]+$'),
    tagline               text CHECK (length(tagline) BETWEEN 1 AND 500),
    tone                  text NOT NULL DEFAULT 'Friendly'
                          CHECK (tone IN ('Friendly', 'Professional', 'Formal', 'Energetic')),
    language              text NOT NULL DEFAULT 'en' CHECK (language IN ('en', 'fr', 'es')),
    followup_speed        text NOT NULL DEFAULT 'Instant'
                          CHECK (followup_speed IN ('Instant', 'Within 1 hour', 'Same day')),
    ai_personalized_reply boolean NOT NULL DEFAULT true,
    opening_hours         text CHECK (length(opening_hours) BETWEEN 1 AND 500),
    handoff_message       text CHECK (length(handoff_message) BETWEEN 1 AND 1000),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE faq_entries (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    position   integer NOT NULL CHECK (position >= 0),
    question   text NOT NULL CHECK (length(question) BETWEEN 1 AND 500),
    answer     text NOT NULL CHECK (length(answer) BETWEEN 1 AND 1000),
    keywords   text[] NOT NULL DEFAULT '{}' CHECK (cardinality(keywords) <= 20),
    UNIQUE (tenant_id, position)
);
