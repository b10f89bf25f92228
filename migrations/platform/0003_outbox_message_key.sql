-- The Pulsar message key of an outbox row when it is not the aggregate id: the collector's
-- tracking events are each their own aggregate, but are keyed by campaign (or affiliate) so
-- Key_Shared consumers see one campaign's events on one consumer (API.md §6).
ALTER TABLE outbox ADD COLUMN message_key TEXT;
