-- The reports context (schema `reports`): the CQRS read model of API.md §5, kept in both
-- versions from the same events, the events themselves, the active version and the legacy
-- reports generated.

-- Every event the projection consumed, exactly as received. Its primary key is the inbox
-- (a redelivered event inserts nothing and changes nothing), and it is the history
-- `aeropartners reports rebuild` replays, so a projection never depends on Pulsar retention.
CREATE TABLE eventos (
    event_id          UUID        PRIMARY KEY,
    event_type        TEXT        NOT NULL,
    aggregate_type    TEXT        NOT NULL,
    aggregate_id      TEXT        NOT NULL,
    aggregate_version BIGINT      NOT NULL,
    occurred_at       TIMESTAMPTZ NOT NULL,
    correlation_id    TEXT        NOT NULL,
    data              JSONB       NOT NULL,
    received_at       TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX eventos_por_agregado ON eventos (aggregate_type, aggregate_id, aggregate_version DESC);

-- v1 (simple): what the totals by state and currency need, and the columns the filters use.
-- Every event carries its aggregate's full state, so a row holds the newest version seen;
-- `fecha_creacion` is the earliest event of the payment (commutative: any delivery order
-- ends with the same value).
CREATE TABLE v1_pagos (
    id_pago        TEXT          PRIMARY KEY,
    id_afiliado    TEXT          NOT NULL,
    monto          NUMERIC(14,2) NOT NULL,
    moneda         TEXT          NOT NULL,
    estado         TEXT          NOT NULL,
    fecha_creacion TIMESTAMPTZ   NOT NULL,
    version        BIGINT        NOT NULL
);

CREATE INDEX v1_pagos_por_fecha ON v1_pagos (fecha_creacion);
CREATE INDEX v1_pagos_por_afiliado ON v1_pagos (id_afiliado);

-- v2 (detailed): the payment with its reference and outcome, and the campaigns.
CREATE TABLE v2_pagos (
    id_pago                TEXT          PRIMARY KEY,
    id_afiliado            TEXT          NOT NULL,
    monto                  NUMERIC(14,2) NOT NULL,
    moneda                 TEXT          NOT NULL,
    estado                 TEXT          NOT NULL,
    referencia_pago        TEXT          NOT NULL,
    mensaje_error          TEXT,
    referencia_transaccion TEXT,
    fecha_creacion         TIMESTAMPTZ   NOT NULL,
    fecha_actualizacion    TIMESTAMPTZ   NOT NULL,
    version                BIGINT        NOT NULL
);

CREATE INDEX v2_pagos_por_fecha ON v2_pagos (fecha_creacion);
CREATE INDEX v2_pagos_por_afiliado ON v2_pagos (id_afiliado);

CREATE TABLE v2_campanas (
    id_campana   TEXT          PRIMARY KEY,
    id_afiliado  TEXT          NOT NULL,
    nombre       TEXT          NOT NULL,
    estado       TEXT          NOT NULL,
    presupuesto  NUMERIC(12,2) NOT NULL,
    moneda       TEXT          NOT NULL,
    gasto        NUMERIC(12,2) NOT NULL,
    conversiones BIGINT        NOT NULL,
    version      BIGINT        NOT NULL
);

-- The active version when the version source is `database` (make run), and the last version a
-- replica saw when it is `kubernetes` (so a replica that starts while the API server is away
-- serves what was served before). One row.
CREATE TABLE version_activa (
    id         BOOLEAN     PRIMARY KEY DEFAULT TRUE CHECK (id),
    activa     TEXT        NOT NULL CHECK (activa IN ('v1', 'v2')),
    deseada    TEXT        NOT NULL CHECK (deseada IN ('v1', 'v2')),
    cambiada_en TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);

INSERT INTO version_activa (activa, deseada) VALUES ('v1', 'v1');

-- Every replica listens on this channel; a change reaches them all at once.
CREATE FUNCTION version_activa_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '_version', NEW.activa);
    RETURN NULL;
END
$$;

CREATE TRIGGER version_activa_notify AFTER UPDATE ON version_activa
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION version_activa_notify();

-- Legacy reports (`POST /reporting/report`), kept so any replica can answer for them later.
CREATE TABLE reportes_legacy (
    id               UUID        PRIMARY KEY,
    tipo             TEXT        NOT NULL,
    fecha_generacion TIMESTAMPTZ NOT NULL,
    cuerpo           JSONB       NOT NULL
);

CREATE INDEX reportes_legacy_por_fecha ON reportes_legacy (tipo, fecha_generacion DESC);
CREATE INDEX reportes_legacy_recientes ON reportes_legacy (fecha_generacion DESC);
