-- The access context (schema `acceso`): partner API keys and the audit trail of privileged
-- actions. Every context reads `claves_api` to authenticate its callers and appends to
-- `auditoria`; only key administration writes `claves_api`. Names are schema-qualified: the
-- services that apply this migration have their own schema first on their search_path.

-- One row per key. The key itself is never stored: `huella` is its SHA-256 and `id_clave` its
-- public prefix (`ap_sk_` + 8 characters), shown in lists, logs and the audit trail.
CREATE TABLE acceso.claves_api (
    id_clave     TEXT        PRIMARY KEY CHECK (id_clave ~ '^ap_(sk|rk)_[0-9A-Za-z]{8}$'),
    id_afiliado  TEXT        NOT NULL CHECK (length(id_afiliado) BETWEEN 1 AND 255),
    tipo         TEXT        NOT NULL CHECK (tipo IN ('sk', 'rk')),
    huella       BYTEA       NOT NULL CHECK (length(huella) = 32),
    -- The scopes of a restricted key; a secret key holds every scope whatever this says.
    alcances     TEXT[]      NOT NULL DEFAULT '{}',
    descripcion  TEXT        NOT NULL DEFAULT '' CHECK (length(descripcion) <= 200),
    creada       TIMESTAMPTZ NOT NULL DEFAULT now(),
    creada_por   TEXT        NOT NULL,
    expira       TIMESTAMPTZ,
    revocada     TIMESTAMPTZ,
    revocada_por TEXT
);

CREATE INDEX claves_api_por_afiliado ON acceso.claves_api (id_afiliado, creada DESC);

-- Every replica caches the keys it has seen; a change to a key tells them all at once (the
-- payload is the key id), so a revocation takes effect without a restart, within a second.
CREATE FUNCTION acceso.notificar_clave() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('acceso_claves', NEW.id_clave);
    RETURN NEW;
END;
$$;

CREATE TRIGGER claves_api_cambiada AFTER INSERT OR UPDATE ON acceso.claves_api
    FOR EACH ROW EXECUTE FUNCTION acceso.notificar_clave();

-- Who did what, when, from where, and how it ended: every privileged action (operator
-- actions, key administration, refused attempts at them). Append-only for the services.
CREATE TABLE acceso.auditoria (
    id          BIGSERIAL   PRIMARY KEY,
    fecha       TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    -- afiliado | operador | desarrollo
    tipo_actor  TEXT        NOT NULL,
    -- The key id, the Kubernetes user name, or `development`.
    actor       TEXT        NOT NULL,
    -- e.g. `create payments/revert`
    accion      TEXT        NOT NULL,
    -- The object acted on, e.g. a payment's id.
    objeto      TEXT        NOT NULL DEFAULT '',
    origen      TEXT        NOT NULL DEFAULT '',
    request_id  TEXT        NOT NULL DEFAULT '',
    -- permitido | denegado | fallido
    resultado   TEXT        NOT NULL,
    detalle     TEXT        NOT NULL DEFAULT ''
);

CREATE INDEX auditoria_por_fecha ON acceso.auditoria (fecha DESC);
CREATE INDEX auditoria_por_actor ON acceso.auditoria (actor, fecha DESC);
