"""Schemathesis hooks for `make fuzz` (scripts/fuzz.sh).

The event collector authenticates by fields of the event itself (an affiliate with API keys
must send one; a webhook source must be signed), which an OpenAPI document cannot express. With
FUZZ_COLLECTOR_AUTH=api or =webhook, every generated event of the right JSON types is steered to
the demo affiliate of that kind (config/afiliados.demo.yaml) and, for webhooks, signed over the
exact bytes sent, so the fuzzing reaches dedup, rate limits and storage instead of stopping at
401. Events of the wrong types are left alone: they exercise validation. Without the variable
the hook does nothing.
"""

import hashlib
import hmac
import json
import os
import uuid

import schemathesis

MODE = os.environ.get("FUZZ_COLLECTOR_AUTH", "")
AFFILIATE = {
    "api": ("AFILIADO_API", "API_DIRECT"),
    "webhook": ("AFILIADO_WEBHOOK", "WEBHOOK"),
}.get(MODE)
WEBHOOK_SECRET = b"whsec_demo_2026"
EVENT_PATHS = {"/event-collector/events", "/event-collector/events/batch"}
TYPES = ["CLICK", "IMPRESSION", "PAGE_VIEW", "CONVERSION"]
TEXT_FIELDS = {
    "api_key", "fuente_evento", "hash_validacion", "id_afiliado", "id_campana",
    "id_evento_cliente", "id_oferta", "identificador_dispositivo", "moneda", "navegador",
    "resolucion_pantalla", "sistema_operativo", "timestamp", "tipo_dispositivo",
    "tipo_evento", "url",
}


def well_typed(event):
    if not isinstance(event, dict):
        return False
    if any(k in event and event[k] is not None and not isinstance(event[k], str) for k in TEXT_FIELDS):
        return False
    if any(k in event and event[k] is not None and not isinstance(event[k], dict)
           for k in ("datos_custom", "parametros_tracking")):
        return False
    value = event.get("valor_conversion")
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def steer(event):
    if not well_typed(event):
        return event
    event = dict(event)
    event["id_afiliado"], event["fuente_evento"] = AFFILIATE
    if event.get("tipo_evento") not in TYPES:
        event["tipo_evento"] = TYPES[len(str(event.get("tipo_evento"))) % 3]
    value = event.get("valor_conversion")
    if value is not None:
        event["tipo_evento"] = "CONVERSION"
        event["valor_conversion"] = round(min(abs(float(value)), 1_000_000.0), 2) or 1.0
        event["moneda"] = ["USD", "EUR", "COP"][len(str(event.get("moneda"))) % 3]
    else:
        event.pop("moneda", None)
    event.pop("timestamp", None)
    campaign = event.get("id_campana")
    if campaign:
        try:
            uuid.UUID(campaign)
        except ValueError:
            event.pop("id_campana")
    return event


@schemathesis.hook
def before_call(context, case, kwargs):
    operation = case.operation
    if AFFILIATE is None or operation.method.upper() != "POST" or operation.path not in EVENT_PATHS:
        return
    body = case.body
    if operation.path.endswith("/batch"):
        if isinstance(body, dict) and isinstance(body.get("eventos"), list):
            case.body = dict(body, eventos=[steer(e) for e in body["eventos"]])
    elif isinstance(body, dict):
        case.body = steer(body)
    headers = dict(case.headers or {})
    if MODE == "api":
        # A random signature header would make the request a 400 before authentication.
        headers.pop("X-Webhook-Signature", None)
    elif isinstance(case.body, (dict, list)):
        try:
            raw = json.dumps(case.body, allow_nan=False).encode()
        except ValueError:
            return
        case.body = raw
        headers["X-Webhook-Signature"] = "sha256=" + hmac.new(WEBHOOK_SECRET, raw, hashlib.sha256).hexdigest()
    case.headers = headers
