-- Schema of one shard. Every shard holds the same tables; rows live on the shard that owns the
-- slot of their user id (orders, emails and analytics follow their user), or of their email
-- (email claims).

-- Ids come from the application (time-ordered, random low bits) rather than a sequence: the id
-- decides the shard, so it must exist before the row does. Because equal ids always hash to the
-- same shard, this primary key makes ids unique across all shards.
CREATE TABLE users (
    id          BIGINT PRIMARY KEY,
    name        TEXT        NOT NULL,
    email       TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per email address in use, on the shard owning slot_for_key(email). The primary key is
-- what makes an email unique across shards.
CREATE TABLE email_claims (
    email       TEXT PRIMARY KEY,
    user_id     BIGINT      NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- An email change in progress (on the user's shard). It is written before the new claim is taken,
-- so a crash at any step leaves a record that the sweeper finishes: no orphaned claims.
CREATE TABLE email_changes (
    user_id     BIGINT PRIMARY KEY REFERENCES users (id),
    old_email   TEXT        NOT NULL,
    new_email   TEXT        NOT NULL,
    -- A name change sent together with the email change, applied with it (or not at all).
    new_name    TEXT,
    -- 'claim': the new claim may not exist yet; 'release': the user row already carries the new
    -- email and only the old claim remains to be dropped.
    state       TEXT        NOT NULL DEFAULT 'claim',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE orders (
    id          BIGINT PRIMARY KEY,
    -- Same shard as the user, so the foreign key is an ordinary local one.
    user_id     BIGINT      NOT NULL REFERENCES users (id),
    items       JSONB       NOT NULL,
    total_cents BIGINT      NOT NULL CHECK (total_cents >= 0),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX orders_user_id ON orders (user_id);

-- Transactional outbox: queue messages written in the same transaction as the order, relayed to
-- Redis Streams by the relay task and deleted once Redis has them.
CREATE TABLE outbox (
    id          BIGSERIAL PRIMARY KEY,
    stream      TEXT        NOT NULL,
    payload     JSONB       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Idempotency of queue handlers: a message's effect and its row here commit together.
CREATE TABLE processed_messages (
    event_id     TEXT PRIMARY KEY,
    stream       TEXT        NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- What the email worker "sent": the rendered confirmation.
CREATE TABLE sent_emails (
    event_id    TEXT PRIMARY KEY,
    order_id    BIGINT      NOT NULL,
    user_id     BIGINT      NOT NULL,
    recipient   TEXT        NOT NULL,
    subject     TEXT        NOT NULL,
    body        TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Analytics counters per event and day; totals are the sum over shards.
CREATE TABLE analytics_counters (
    event       TEXT   NOT NULL,
    day         DATE   NOT NULL,
    count       BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (event, day)
);
