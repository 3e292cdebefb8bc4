-- The serial of the certificate a registration last obtained (ADR 0025).
-- The same key pair asking again is answered with a new certificate only
-- while that one is still the device's: a device whose certificate was
-- replaced (new media registered) or revoked cannot take it back.
ALTER TABLE registrations ADD COLUMN certificate_serial TEXT;
