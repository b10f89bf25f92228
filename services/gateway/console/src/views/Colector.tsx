import { useState } from "preact/hooks";
import { call, get, type EstadisticasColector, type EventoColector } from "../api";
import { Badge, Failure, Figure, Panel } from "../components";
import { corto, fechaDe } from "../format";
import { usePoll } from "../hooks";
import { PERMISOS, usePuede } from "../sesion";

export function Colector() {
  const estadisticas = usePoll(() => get<EstadisticasColector>("/event-collector/statistics"), 3000);
  const fallidos = usePoll(() => get<{ eventos_fallidos: EventoColector[]; total: number }>("/event-collector/failed-events?limite=50"), 3000);
  // What each retry answered, by event id: shown beside the event until the list moves on.
  const [resultados, setResultados] = useState<Record<string, string>>({});
  const [reintentando, setReintentando] = useState<string>();
  const puedeReintentar = usePuede(PERMISOS.reintentarEvento);
  const reintentar = async (id: string) => {
    setReintentando(id);
    try {
      const { body } = await call<EventoColector>("POST", `/event-collector/events/${id}/retry`);
      setResultados((r) => ({ ...r, [id]: `${body.estado} tras ${body.intentos} intentos` }));
    } catch (err) {
      setResultados((r) => ({ ...r, [id]: err instanceof Error ? err.message : String(err) }));
    } finally {
      setReintentando(undefined);
      fallidos.refresh();
      estadisticas.refresh();
    }
  };
  const e = estadisticas.data;
  return (
    <div class="grid">
      <Panel title="Estadísticas del colector" testid="estadisticas-colector">
        <Failure error={estadisticas.error} />
        {e && (
          <>
            <div class="figures">
              <Figure label="eventos" value={e.total_eventos} />
              {Object.entries(e.por_estado).map(([estado, n]) => (
                <Figure label={estado.toLowerCase()} value={n} testid={`colector-${estado}`} />
              ))}
            </div>
            <div class="figures">
              {Object.entries(e.por_tipo).map(([tipo, n]) => (
                <Figure label={tipo.toLowerCase()} value={n} />
              ))}
              {Object.entries(e.valor_conversiones).map(([moneda, v]) => (
                <Figure label={`conversiones ${moneda}`} value={v.toFixed(2)} />
              ))}
            </div>
          </>
        )}
      </Panel>
      <Panel title={`Eventos fallidos${fallidos.data ? ` (${fallidos.data.total})` : ""}`} testid="fallidos">
        <Failure error={fallidos.error} />
        <p class="muted">Un evento queda FALLIDO cuando el broker no lo aceptó; el reintento automático sigue con espera creciente, y «Reintentar» lo publica ya.</p>
        <table>
          <thead>
            <tr><th>Evento</th><th>Estado</th><th class="num">Intentos</th><th>Recibido</th><th>Motivo</th><th></th></tr>
          </thead>
          <tbody>
            {fallidos.data?.eventos_fallidos.map((ev) => (
              <tr data-testid="evento-fallido" data-id={ev.id_evento}>
                <td><code>{corto(ev.id_evento)}</code></td>
                <td><Badge value={ev.estado} /></td>
                <td class="num">{ev.intentos}</td>
                <td>{fechaDe(ev.recibido_en)}</td>
                <td class="wrap">{ev.razon_fallo ?? "—"}</td>
                <td>
                  {puedeReintentar && <button disabled={reintentando === ev.id_evento} onClick={() => reintentar(ev.id_evento)}>
                    {reintentando === ev.id_evento ? "Reintentando…" : "Reintentar"}
                  </button>}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
        {fallidos.data?.eventos_fallidos.length === 0 && <p class="muted">Ningún evento fallido.</p>}
        {Object.keys(resultados).length > 0 && (
          <ul data-testid="reintentos">
            {Object.entries(resultados).map(([id, r]) => (
              <li data-id={id}>
                <code>{corto(id)}</code>: {r}
              </li>
            ))}
          </ul>
        )}
      </Panel>
    </div>
  );
}
