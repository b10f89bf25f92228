-- The payments context's own tables (schema `payments`; outbox/inbox/idempotency come from
-- migrations/platform).

CREATE TABLE pagos (
    id                     UUID          PRIMARY KEY,
    id_afiliado            TEXT          NOT NULL CHECK (length(id_afiliado) BETWEEN 1 AND 255),
    -- Exact cents; never a float.
    monto                  NUMERIC(14,2) NOT NULL CHECK (monto > 0),
    moneda                 TEXT          NOT NULL CHECK (moneda IN ('USD', 'EUR', 'COP')),
    -- The partner's idempotency key for a payment: one payment per reference, ever.
    referencia_pago        TEXT          NOT NULL UNIQUE CHECK (length(referencia_pago) BETWEEN 1 AND 255),
    estado                 TEXT          NOT NULL
        CHECK (estado IN ('PENDIENTE', 'PROCESANDO', 'EXITOSO', 'FALLIDO', 'REVERSADO')),
    fecha_creacion         TIMESTAMPTZ   NOT NULL,
    fecha_actualizacion    TIMESTAMPTZ   NOT NULL,
    fecha_procesamiento    TIMESTAMPTZ,
    mensaje_error          TEXT,
    referencia_transaccion TEXT,
    motivo_reversion       TEXT,
    eventos_emitidos       BIGINT        NOT NULL DEFAULT 0
);

CREATE INDEX pagos_por_afiliado ON pagos (id_afiliado, fecha_creacion DESC);

-- Everything that happened to a payment, for GET /pagos/{id}/eventos. Published events are
-- read from the outbox instead of being copied here.
CREATE TABLE pago_traza (
    id         BIGSERIAL   PRIMARY KEY,
    id_pago    UUID        NOT NULL REFERENCES pagos (id),
    evento     TEXT        NOT NULL,
    fecha      TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    detalle    TEXT        NOT NULL,
    request_id TEXT
);

CREATE INDEX pago_traza_por_pago ON pago_traza (id_pago, id);
