-- Replays must carry the headers of the first response too (Location, ETag).
ALTER TABLE idempotency_keys ADD COLUMN response_headers JSONB NOT NULL DEFAULT '[]';
