-- A data service's projection of payment and campaign events (one schema per version:
-- data_service_v1, data_service_v2). Every event carries the aggregate's full state, so the
-- row keeps the newest version seen and older or repeated events change nothing.

CREATE TABLE pagos (
    id_pago     TEXT          PRIMARY KEY,
    id_afiliado TEXT          NOT NULL,
    monto       NUMERIC(14,2) NOT NULL,
    moneda      TEXT          NOT NULL,
    estado      TEXT          NOT NULL,
    fecha       TIMESTAMPTZ   NOT NULL,
    version     BIGINT        NOT NULL
);

CREATE TABLE campanas (
    id_campana   TEXT          PRIMARY KEY,
    id_afiliado  TEXT          NOT NULL,
    estado       TEXT          NOT NULL,
    presupuesto  NUMERIC(12,2) NOT NULL,
    moneda       TEXT          NOT NULL,
    gasto        NUMERIC(12,2) NOT NULL,
    conversiones BIGINT        NOT NULL,
    version      BIGINT        NOT NULL
);
