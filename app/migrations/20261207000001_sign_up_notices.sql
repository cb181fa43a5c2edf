-- The email worker also sends notices that someone tried to sign up with an address that already
-- has an account; those belong to no order.
ALTER TABLE sent_emails ALTER COLUMN order_id DROP NOT NULL;
