-- The campaigns context's own tables (schema `campaigns`; outbox/inbox/idempotency come from
-- migrations/platform).

CREATE TABLE campanas (
    id                  UUID          PRIMARY KEY,
    nombre              TEXT          NOT NULL CHECK (length(nombre) BETWEEN 1 AND 255),
    tipo                TEXT          NOT NULL
        CHECK (tipo IN ('PROMOCIONAL', 'FIDELIZACION', 'ADQUISICION', 'RETENCION')),
    descripcion         TEXT,
    estado              TEXT          NOT NULL
        CHECK (estado IN ('CREATED', 'ACTIVE', 'PAUSED', 'COMPLETED', 'CANCELLED')),
    presupuesto         NUMERIC(12,2) NOT NULL CHECK (presupuesto BETWEEN 0 AND 1000000),
    moneda              TEXT          NOT NULL CHECK (moneda IN ('USD', 'EUR', 'COP')),
    fecha_inicio        TIMESTAMPTZ   NOT NULL,
    fecha_fin           TIMESTAMPTZ   NOT NULL,
    id_afiliado         TEXT          NOT NULL CHECK (length(id_afiliado) BETWEEN 1 AND 255),
    impresiones         BIGINT        NOT NULL DEFAULT 0 CHECK (impresiones >= 0),
    clicks              BIGINT        NOT NULL DEFAULT 0 CHECK (clicks >= 0),
    conversiones        BIGINT        NOT NULL DEFAULT 0 CHECK (conversiones >= 0),
    gasto_actual        NUMERIC(12,2) NOT NULL DEFAULT 0 CHECK (gasto_actual >= 0),
    ingresos            NUMERIC(14,2) NOT NULL DEFAULT 0,
    fecha_creacion      TIMESTAMPTZ   NOT NULL,
    fecha_actualizacion TIMESTAMPTZ   NOT NULL,
    version             BIGINT        NOT NULL,
    CHECK (fecha_inicio < fecha_fin),
    CHECK (gasto_actual <= presupuesto)
);

CREATE INDEX campanas_por_fecha ON campanas (fecha_creacion DESC, id);
CREATE INDEX campanas_por_afiliado ON campanas (id_afiliado, estado);
