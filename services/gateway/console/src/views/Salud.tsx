import { useMemo } from "preact/hooks";
import { get, type OutboxStats, type Servicio } from "../api";
import { Chart, Failure, Figure, Panel } from "../components";
import { duracion } from "../format";
import { usePoll } from "../hooks";

/** The outbox samples of this page's life (one every 2 s, the last 10 minutes), kept across views. */
const muestras: { t: number; stats: OutboxStats }[] = [];
const MAX_MUESTRAS = 300;

async function muestrear(): Promise<OutboxStats> {
  const stats = await get<OutboxStats>("/pagos/outbox/estadisticas");
  muestras.push({ t: Date.now() / 1000, stats });
  if (muestras.length > MAX_MUESTRAS) muestras.shift();
  return stats;
}

export function Salud() {
  const salud = usePoll(() => get<{ todos_listos: boolean; servicios: Servicio[] }>("/console/api/salud"), 3000);
  const outbox = usePoll(muestrear, 2000);
  const { x, retraso, pendientes } = useMemo(
    () => ({
      x: muestras.map((m) => m.t),
      retraso: [
        { label: "pendiente más antiguo (ms)", color: "#dc2626", values: muestras.map((m) => m.stats.pendiente_mas_antiguo_ms) },
        { label: "p99 publicados (ms)", color: "#3b82f6", values: muestras.map((m) => m.stats.lag_ms_p99) },
      ],
      pendientes: [{ label: "eventos pendientes", color: "#d97706", values: muestras.map((m) => m.stats.eventos_pendientes) }],
    }),
    [outbox.data],
  );
  const s = salud.data;
  const o = outbox.data;
  return (
    <div class="grid">
      <Panel
        title="Servicios"
        testid="servicios"
        actions={s && <span class={s.todos_listos ? "ok" : "error"}>{s.todos_listos ? "todos listos" : `${s.servicios.filter((x) => !x.listo).length} sin responder o no listos`}</span>}
      >
        <Failure error={salud.error} />
        <table>
          <thead>
            <tr><th>Servicio</th><th>Estado</th><th class="num">Latencia</th><th>Dependencias</th></tr>
          </thead>
          <tbody>
            {s?.servicios.map((svc) => (
              <tr data-testid="servicio" data-listo={svc.listo}>
                <td>{svc.nombre}</td>
                <td class={svc.listo ? "ok" : "error"}>{svc.listo ? "listo" : svc.codigo ? `no listo (${svc.codigo})` : "sin respuesta"}</td>
                <td class="num">{svc.latencia_ms} ms</td>
                <td><Dependencias detalle={svc.detalle} /></td>
              </tr>
            ))}
          </tbody>
        </table>
      </Panel>
      <Panel title="Outbox de pagos → broker" testid="outbox">
        <Failure error={outbox.error} />
        {o && (
          <div class="figures">
            <Figure label="publicados" value={o.eventos_procesados} />
            <Figure label="pendientes" value={o.eventos_pendientes} testid="outbox-pendientes" />
            <Figure label="fallidos (reintentando)" value={o.eventos_fallidos} />
            <Figure label="p99 hasta publicar" value={duracion(o.lag_ms_p99)} />
            <Figure label="pendiente más antiguo" value={duracion(o.pendiente_mas_antiguo_ms)} />
          </div>
        )}
        <Chart title="Retraso del outbox (crece si el broker no acepta)" x={x} series={retraso} unit="ms" />
        <Chart title="Eventos por publicar" x={x} series={pendientes} height={140} />
      </Panel>
    </div>
  );
}

/** A service's /ready answer: `{status, checks: [{name, ok, required, detail}]}`, or whatever it said (the broker says "ok"). */
function Dependencias({ detalle }: { detalle: unknown }) {
  const deps = (detalle as { checks?: { name: string; ok: boolean; detail: string }[] } | null)?.checks;
  if (!deps) return <code class="muted">{typeof detalle === "string" ? detalle : JSON.stringify(detalle)}</code>;
  return (
    <ul class="deps">
      {deps.map((d) => (
        <li class={d.ok ? "ok" : "error"} title={d.detail}>
          {d.ok ? "✓" : "✗"} {d.name}: <span class="muted">{d.detail}</span>
        </li>
      ))}
    </ul>
  );
}
