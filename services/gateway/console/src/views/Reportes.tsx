import { useState } from "preact/hooks";
import { call, get, type Replica, type VersionReportes } from "../api";
import { Badge, Failure, Figure, Panel } from "../components";
import { duracion, fechaDe, monto } from "../format";
import { usePoll } from "../hooks";
import { PERMISOS, usePuede } from "../sesion";

interface Reporte {
  version: string;
  total_pagos: number;
  monto_total: Record<string, number>;
  por_estado: Record<string, number>;
  generado_en: string;
  tasa_exito?: number;
  ticket_promedio?: number;
  por_afiliado?: { id_afiliado: string; cantidad: number; monto_total: number; tasa_exito: number }[];
  campanas?: { activas: number; total: number; presupuesto_total: number; gasto_total: number };
}

interface Cambio {
  hacia: "v1" | "v2";
  pedido: number;
  /** When every replica first answered with the new version. */
  completo?: number;
}

export function Reportes() {
  const version = usePoll(() => get<VersionReportes>("/api/reports/version"), 2000);
  const replicas = usePoll(() => get<{ replicas: Replica[] }>("/console/api/replicas"), 500);
  const reporte = usePoll(async () => {
    const { body, headers } = await call<Reporte>("GET", "/api/reports/payments");
    return { body, servida: headers.get("x-report-version") ?? body.version };
  }, 2000);
  const [cambio, setCambio] = useState<Cambio>();
  const [error, setError] = useState<string>();
  const puedeCambiar = usePuede(PERMISOS.cambiarVersion);

  const lista = replicas.data?.replicas ?? [];
  const enNueva = cambio ? lista.filter((r) => r.version?.active === cambio.hacia).length : 0;
  if (cambio && !cambio.completo && lista.length > 0 && enNueva === lista.length) {
    setCambio({ ...cambio, completo: Date.now() });
  }

  const cambiar = async (hacia: "v1" | "v2") => {
    setError(undefined);
    setCambio({ hacia, pedido: Date.now() });
    try {
      await call("PUT", "/api/reports/version", { active: hacia });
      version.refresh();
      replicas.refresh();
      reporte.refresh();
    } catch (err) {
      setCambio(undefined);
      setError(err instanceof Error ? err.message : String(err));
    }
  };
  const activa = version.data?.active;
  return (
    <div class="grid">
      <Panel
        title="Versión del reporte"
        testid="version"
        actions={
          puedeCambiar && <div class="buttons">
            {(["v1", "v2"] as const).map((v) => (
              <button disabled={activa === v && version.data?.desired === v} onClick={() => cambiar(v)} data-testid={`activar-${v}`}>
                Activar {v}
              </button>
            ))}
          </div>
        }
      >
        <Failure error={version.error ?? error} />
        {version.data && (
          <div class="figures">
            <Figure label="activa" value={<span data-testid="version-activa">{version.data.active}</span>} />
            <Figure label="pedida" value={version.data.desired} />
            <Figure label="fuente" value={version.data.source} />
            <Figure label="cambiada" value={fechaDe(version.data.switched_at)} />
          </div>
        )}
        {cambio && (
          <p class="propagation" data-testid="propagacion">
            Cambio a {cambio.hacia}: {enNueva} de {lista.length} réplicas lo sirven
            {cambio.completo ? ` — todas en ${duracion(cambio.completo - cambio.pedido)}` : " …"}
          </p>
        )}
      </Panel>
      <Panel title="Réplicas de reports" testid="replicas">
        <Failure error={replicas.error} />
        <table>
          <thead>
            <tr><th>Réplica</th><th>Sirve</th><th>Pedida</th><th>Fuente</th><th>Cambiada</th><th>Dirección</th></tr>
          </thead>
          <tbody>
            {lista.map((r) => (
              <tr data-testid="replica" data-active={r.version?.active ?? ""}>
                <td>{r.version?.replica ?? "—"}</td>
                <td>{r.version ? <Badge value={r.version.active} /> : <span class="error">{r.error}</span>}{r.version?.stale && " (sin fuente)"}</td>
                <td>{r.version?.desired ?? "—"}</td>
                <td>{r.version?.source ?? "—"}</td>
                <td>{fechaDe(r.version?.switched_at)}</td>
                <td class="wrap"><code>{r.url}</code></td>
              </tr>
            ))}
          </tbody>
        </table>
      </Panel>
      <Panel title="Reporte de pagos" testid="reporte">
        <Failure error={reporte.error} />
        {reporte.data && <VistaReporte reporte={reporte.data.body} servida={reporte.data.servida} />}
      </Panel>
    </div>
  );
}

function VistaReporte({ reporte, servida }: { reporte: Reporte; servida: string }) {
  return (
    <>
      <p>
        Servido en <strong data-testid="reporte-version">{servida}</strong>, generado {fechaDe(reporte.generado_en)}
      </p>
      <div class="figures">
        <Figure label="pagos" value={reporte.total_pagos} />
        {Object.entries(reporte.monto_total).map(([moneda, valor]) => (
          <Figure label={`total ${moneda}`} value={monto(valor)} />
        ))}
        {Object.entries(reporte.por_estado).map(([estado, n]) => (
          <Figure label={estado.toLowerCase()} value={n} />
        ))}
        {reporte.tasa_exito !== undefined && <Figure label="tasa de éxito" value={`${reporte.tasa_exito.toFixed(1)} %`} />}
        {reporte.ticket_promedio !== undefined && <Figure label="ticket promedio" value={monto(reporte.ticket_promedio)} />}
        {reporte.campanas && <Figure label="campañas activas" value={`${reporte.campanas.activas} de ${reporte.campanas.total}`} />}
      </div>
      {reporte.por_afiliado && (
        <table>
          <thead>
            <tr><th>Afiliado</th><th class="num">Pagos</th><th class="num">Monto</th><th class="num">Éxito</th></tr>
          </thead>
          <tbody>
            {reporte.por_afiliado.slice(0, 10).map((a) => (
              <tr>
                <td>{a.id_afiliado}</td>
                <td class="num">{a.cantidad}</td>
                <td class="num">{monto(a.monto_total)}</td>
                <td class="num">{a.tasa_exito.toFixed(1)} %</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </>
  );
}
