-- GET /pagos: the latest payments first, paged by (fecha_creacion, id). fecha_creacion never
-- changes, so state updates stay HOT (no index on estado on purpose: the list filters it while
-- walking this index).
CREATE INDEX pagos_recientes ON pagos (fecha_creacion DESC, id DESC);
