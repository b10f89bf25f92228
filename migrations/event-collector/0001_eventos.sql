-- The collector's own tables (schema `event_collector`; outbox/inbox/idempotency come from
-- migrations/platform). An accepted event's publication state is its outbox row's: published,
-- pending, or failed with attempts and the last error.

CREATE TABLE eventos (
    id_evento         UUID        PRIMARY KEY,
    -- `cliente:["<id_afiliado>","<id_evento_cliente>"]` or `hash:<hash_evento>`: one event per
    -- key, shared by every replica, for as long as the row is kept (DEDUP_RETENTION).
    clave_dedup       TEXT        NOT NULL UNIQUE,
    hash_evento       TEXT        NOT NULL CHECK (length(hash_evento) = 64),
    tipo_evento       TEXT        NOT NULL CHECK (tipo_evento IN ('CLICK', 'IMPRESSION', 'CONVERSION', 'PAGE_VIEW')),
    id_afiliado       TEXT        NOT NULL,
    id_campana        UUID,
    id_evento_cliente TEXT,
    fuente_evento     TEXT        NOT NULL CHECK (fuente_evento IN ('WEB_TAG', 'MOBILE_SDK', 'API_DIRECT', 'WEBHOOK')),
    -- ACEPTADO goes to the outbox; DESCARTADO (a business rule) is kept for the partner's
    -- answer and the statistics but never published.
    estado            TEXT        NOT NULL CHECK (estado IN ('ACEPTADO', 'DESCARTADO')),
    motivo_descarte   TEXT,
    topic_destino     TEXT        NOT NULL,
    valor_conversion  NUMERIC(14,2),
    moneda            TEXT,
    timestamp_evento  TIMESTAMPTZ,
    recibido_en       TIMESTAMPTZ NOT NULL,
    request_id        TEXT,
    -- The envelope's data as published (content plus server context).
    datos             JSONB       NOT NULL,
    CHECK ((valor_conversion IS NULL) = (moneda IS NULL))
);

CREATE INDEX eventos_recibido_en ON eventos (recibido_en);
CREATE INDEX eventos_por_afiliado ON eventos (id_afiliado, recibido_en);

-- Rate limits: one GCRA state per affiliate, updated by every replica in its write transaction.
CREATE TABLE limites_afiliado (
    id_afiliado TEXT        PRIMARY KEY,
    -- Theoretical arrival time; NULL until the affiliate's first event.
    tat         TIMESTAMPTZ
);

-- Timestamped webhook signatures already used (the replay cache), until they expire.
CREATE TABLE firmas_usadas (
    firma     TEXT        PRIMARY KEY,
    caduca_en TIMESTAMPTZ NOT NULL
);

CREATE INDEX firmas_usadas_caducidad ON firmas_usadas (caduca_en);
