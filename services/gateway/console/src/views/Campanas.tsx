import { useState } from "preact/hooks";
import { get, type Campana, type MetricasDetalle } from "../api";
import { Badge, Failure, Figure, Panel } from "../components";
import { corto, fechaDe, monto } from "../format";
import { usePoll } from "../hooks";

export function Campanas() {
  const lista = usePoll(() => get<{ campanas: Campana[]; total: number }>("/campaigns/?limit=20"), 5000);
  const [elegida, setElegida] = useState<string>();
  return (
    <div class="grid">
      <Panel title={`Campañas${lista.data ? ` (${lista.data.total})` : ""}`} testid="campanas">
        <Failure error={lista.error} />
        <table>
          <thead>
            <tr><th>Campaña</th><th>Afiliado</th><th>Estado</th><th class="num">Presupuesto</th><th class="num">Gasto</th><th class="num">Clicks</th><th class="num">CTR</th><th>Fin</th></tr>
          </thead>
          <tbody>
            {lista.data?.campanas.map((c) => (
              <tr key={c.id} class={c.id === elegida ? "selected" : ""} onClick={() => setElegida(c.id)}>
                <td>{c.nombre} <code class="muted">{corto(c.id)}</code></td>
                <td>{c.id_afiliado}</td>
                <td><Badge value={c.estado} /></td>
                <td class="num">{monto(c.presupuesto.monto, c.presupuesto.moneda)}</td>
                <td class="num">{monto(c.metricas.gasto_actual)}</td>
                <td class="num">{c.metricas.clicks}</td>
                <td class="num">{c.metricas.ctr.toFixed(2)} %</td>
                <td>{fechaDe(c.fecha_fin)}</td>
              </tr>
            ))}
          </tbody>
        </table>
        {lista.data?.campanas.length === 0 && <p class="muted">Ninguna campaña todavía: créelas con POST /campaigns/ (Postman, carpeta Campañas).</p>}
      </Panel>
      {elegida && <Detalle id={elegida} />}
    </div>
  );
}

function Detalle({ id }: { id: string }) {
  const metricas = usePoll(() => get<MetricasDetalle>(`/campaigns/${id}/metrics`), 5000, [id]);
  const m = metricas.data;
  const cifra = (v: number | null) => (v === null ? "—" : v.toFixed(2));
  return (
    <Panel title={`Métricas de ${corto(id)}`} testid="metricas-campana">
      <Failure error={metricas.error} />
      {m && (
        <>
          <div class="figures">
            <Figure label="impresiones" value={m.metricas_basicas.impresiones} />
            <Figure label="clicks" value={m.metricas_basicas.clicks} />
            <Figure label="conversiones" value={m.metricas_basicas.conversiones} />
            <Figure label="ROI" value={cifra(m.metricas_calculadas.roi)} />
            <Figure label="CPC" value={cifra(m.metricas_calculadas.cpc)} />
            <Figure label="CPA" value={cifra(m.metricas_calculadas.cpa)} />
            <Figure label="rendimiento" value={m.rendimiento} />
          </div>
          {m.optimizaciones.sugerencias.length > 0 && (
            <ul>
              {m.optimizaciones.sugerencias.map((s) => (
                <li>{s}</li>
              ))}
            </ul>
          )}
        </>
      )}
    </Panel>
  );
}
