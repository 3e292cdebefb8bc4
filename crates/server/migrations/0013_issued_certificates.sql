-- Every device certificate the CA issued, until it expires. A certificate
-- here that is neither its device's current nor previous one (re-enrolled,
-- renewed past, revoked, or its device deleted) goes on the revocation list
-- tetherd writes for an external MQTT broker, which checks only the CA.
-- No foreign key: a deleted device's certificates must stay listed.
CREATE TABLE issued_certificates (
    serial TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    not_after BIGINT NOT NULL
);
-- Expired certificates leave the list by time.
CREATE INDEX issued_certificates_not_after ON issued_certificates (not_after);
