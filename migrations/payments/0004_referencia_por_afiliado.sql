-- A payment reference is the partner's own idempotency key: unique per affiliate, not across
-- the platform. Globally unique, one partner could learn another's references (a 409 names a
-- reference in use) or take them first, including the `COM-` references of the commissions
-- the platform would pay it.
--
-- The one migration that is not purely additive: code older than it says
-- `ON CONFLICT (referencia_pago)`, which needs the global constraint, so an image older than
-- this migration cannot run on this schema (docs/kubernetes.md, "Rolling back").
ALTER TABLE pagos ADD CONSTRAINT pagos_referencia_por_afiliado UNIQUE (id_afiliado, referencia_pago);
ALTER TABLE pagos DROP CONSTRAINT pagos_referencia_pago_key;
