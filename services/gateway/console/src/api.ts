// Every call goes to the gateway that served the page (same origin): the platform's own routes
// plus /console/api. A problem+json answer becomes an ApiError carrying its `detail`, so every
// view can say what went wrong in the platform's own words.

/** The session's CSRF token, sent on every request that changes something (the gateway
 * refuses such a request made with the session cookie alone). */
let csrf: string | undefined;
export function usarCsrf(token: string | undefined) {
  csrf = token;
}

/** Fired when a call comes back 401: the session ended (expired, revoked, signed out). */
export const SESION_PERDIDA = "sesion-perdida";

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

export interface Answer<T> {
  body: T;
  headers: Headers;
}

export async function call<T>(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<Answer<T>> {
  const init: RequestInit = { method, headers: { accept: "application/json", ...headers } };
  if (csrf && method !== "GET" && method !== "HEAD") {
    (init.headers as Record<string, string>)["x-csrf-token"] = csrf;
  }
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    (init.headers as Record<string, string>)["content-type"] = "application/json";
  }
  let response: Response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(0, `Sin respuesta del gateway (${String(error)})`);
  }
  const text = await response.text();
  let parsed: unknown = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = text;
  }
  if (response.status === 401 && path !== "/console/api/sesion") {
    window.dispatchEvent(new Event(SESION_PERDIDA));
  }
  if (!response.ok) {
    const problem = parsed as { detail?: string; title?: string; errors?: { field: string; message: string }[] } | null;
    const fields = problem?.errors?.map((e) => `${e.field}: ${e.message}`).join("; ");
    const message = [problem?.detail ?? problem?.title ?? response.statusText, fields].filter(Boolean).join(" — ");
    throw new ApiError(response.status, `${response.status}: ${message}`);
  }
  return { body: parsed as T, headers: response.headers };
}

export const get = async <T>(path: string) => (await call<T>("GET", path)).body;

// The shapes the console reads (API.md is the contract; only the fields shown are typed).

export type EstadoPago = "PENDIENTE" | "PROCESANDO" | "EXITOSO" | "FALLIDO" | "REVERSADO";
export const ESTADOS_PAGO: EstadoPago[] = ["PENDIENTE", "PROCESANDO", "EXITOSO", "FALLIDO", "REVERSADO"];

export interface Pago {
  id_pago: string;
  id_afiliado: string;
  monto: number;
  moneda: string;
  estado: EstadoPago;
  referencia_pago: string;
  fecha_creacion: string;
  fecha_actualizacion: string;
  mensaje_error: string | null;
  referencia_transaccion: string | null;
}

export interface EntradaTraza {
  evento: string;
  fecha: string;
  detalle: unknown;
  request_id: string | null;
}

export interface PagosPorMinuto {
  minutos: { minuto: string; por_estado: Record<EstadoPago, number>; total: number }[];
}

export interface OutboxStats {
  total_eventos: number;
  eventos_procesados: number;
  eventos_pendientes: number;
  eventos_fallidos: number;
  lag_ms_p99: number;
  pendiente_mas_antiguo_ms: number;
}

export interface Campana {
  id: string;
  nombre: string;
  tipo: string;
  estado: string;
  id_afiliado: string;
  presupuesto: { monto: number; moneda: string };
  fecha_inicio: string;
  fecha_fin: string;
  metricas: Metricas;
}

export interface Metricas {
  impresiones: number;
  clicks: number;
  conversiones: number;
  gasto_actual: number;
  ctr: number;
  tasa_conversion: number;
}

export interface MetricasDetalle {
  id_campana: string;
  metricas_basicas: Metricas;
  metricas_calculadas: { roi: number | null; cpc: number | null; cpa: number | null };
  rendimiento: string;
  optimizaciones: { sugerencias: string[]; total_sugerencias: number };
}

export interface VersionReportes {
  active: "v1" | "v2";
  desired: "v1" | "v2";
  source: string;
  switched_at: string | null;
  replica: string;
  stale?: boolean;
}

export interface Replica {
  url: string;
  version?: VersionReportes;
  error?: string;
}

export interface Servicio {
  nombre: string;
  url: string;
  listo: boolean;
  codigo?: number;
  latencia_ms: number;
  detalle: unknown;
}

export interface EventoColector {
  id_evento: string;
  estado: string;
  intentos: number;
  topic_destino: string | null;
  recibido_en: string;
  publicado_en: string | null;
  razon_fallo: string | null;
}

export interface EstadisticasColector {
  total_eventos: number;
  por_tipo: Record<string, number>;
  por_estado: Record<string, number>;
  por_afiliado: Record<string, number>;
  valor_conversiones: Record<string, number>;
}
