-- A commission payment records the tracked conversion it pays for (collector event id,
-- campaign, value, rate); NULL for a partner's own payment.
ALTER TABLE pagos ADD COLUMN comision JSONB;
