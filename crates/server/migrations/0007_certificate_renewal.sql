-- A renewed device's certificate before the last renewal. It stays good for
-- connecting and for renewing until the device connects with its current
-- one, so an answer to a renewal lost on its way to the device does not
-- strand it. NULL when there is none, and after re-enrollment or revocation.
ALTER TABLE devices ADD COLUMN previous_certificate_serial TEXT;
