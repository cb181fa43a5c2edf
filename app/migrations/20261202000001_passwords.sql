-- Sign-in needs a password. The column holds an argon2id hash in PHC string form (algorithm,
-- parameters, salt and hash together, so the parameters can change later without a migration).
-- NULL means no password has been set: users created before passwords existed cannot sign in
-- until they set one with a one-time password-set token (`scaled-app password-token`).
ALTER TABLE users ADD COLUMN password_hash TEXT;
