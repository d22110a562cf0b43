-- The server a tap records for, by its name: created the first time, else marked seen
-- (and its address updated when the tap knows one). Filled in: server = the server table.
INSERT INTO {server} (name, address, created_at, last_seen)
VALUES (%(name)s, %(address)s, now(), now())
ON CONFLICT (name) DO UPDATE
SET last_seen = now(),
    address = CASE WHEN excluded.address <> '' THEN excluded.address
                   ELSE {server}.address END
RETURNING id
