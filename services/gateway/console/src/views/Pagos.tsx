import { useMemo, useState } from "preact/hooks";
import { call, ESTADOS_PAGO, get, type EntradaTraza, type Pago, type PagosPorMinuto } from "../api";
import { Badge, Chart, COLORES, Failure, Panel } from "../components";
import { corto, fechaDe, horaDe, monto } from "../format";
import { type Polled, usePoll } from "../hooks";
import { PERMISOS, useModo, usePuede } from "../sesion";

const FINALES = ["EXITOSO", "FALLIDO", "REVERSADO"];

/** A random key, also where crypto.randomUUID is missing (a page served over plain http to a non-local host). */
function nuevaClave(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return `consola-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

export function Pagos() {
  const [estado, setEstado] = useState("");
  const [elegido, setElegido] = useState<string>();
  const lista = usePoll(() => get<{ pagos: Pago[] }>(`/pagos?limite=20${estado ? `&estado=${estado}` : ""}`), 2000, [estado]);
  const porMinuto = usePoll(() => get<PagosPorMinuto>("/pagos/estadisticas/por-minuto?minutos=30"), 10_000);
  // A payment is an affiliate's, made with its API key: operators do not make them. Only a
  // developer's open platform lets the page make one.
  const desarrollo = useModo() === "development";
  return (
    <div class="grid">
      {desarrollo && (
        <NuevoPago
          onCreado={(id) => {
            setElegido(id);
            lista.refresh();
            porMinuto.refresh();
          }}
        />
      )}
      <PorMinuto datos={porMinuto} />
      <Panel
        title="Últimos pagos"
        testid="lista-pagos"
        actions={
          <select aria-label="Filtrar por estado" value={estado} onChange={(e) => setEstado(e.currentTarget.value)}>
            <option value="">Todos los estados</option>
            {ESTADOS_PAGO.map((e) => (
              <option value={e}>{e}</option>
            ))}
          </select>
        }
      >
        <Failure error={lista.error} />
        <table>
          <thead>
            <tr><th>Pago</th><th>Afiliado</th><th class="num">Monto</th><th>Estado</th><th>Creado</th></tr>
          </thead>
          <tbody>
            {lista.data?.pagos.map((p) => (
              <tr key={p.id_pago} class={p.id_pago === elegido ? "selected" : ""} onClick={() => setElegido(p.id_pago)} data-id={p.id_pago}>
                <td><code>{corto(p.id_pago)}</code></td>
                <td>{p.id_afiliado}</td>
                <td class="num">{monto(p.monto, p.moneda)}</td>
                <td><Badge value={p.estado} /></td>
                <td>{horaDe(p.fecha_creacion)}</td>
              </tr>
            ))}
          </tbody>
        </table>
        {lista.data && lista.data.pagos.length === 0 && <p class="muted">Ningún pago{estado && ` ${estado}`} todavía.</p>}
      </Panel>
      {elegido && <Traza id={elegido} />}
    </div>
  );
}

function NuevoPago({ onCreado }: { onCreado: (id: string) => void }) {
  const [error, setError] = useState<string>();
  const [enviando, setEnviando] = useState(false);
  // A fresh form (and payment reference) after each payment created.
  const [serie, setSerie] = useState(0);
  const referencia = useMemo(() => `consola-${Date.now()}`, [serie]);
  const enviar = async (e: Event) => {
    e.preventDefault();
    const form = new FormData(e.currentTarget as HTMLFormElement);
    setEnviando(true);
    setError(undefined);
    try {
      const { body } = await call<Pago>(
        "POST",
        "/pagos/",
        {
          id_afiliado: form.get("id_afiliado"),
          monto: Number(form.get("monto")),
          moneda: form.get("moneda"),
          referencia_pago: form.get("referencia_pago"),
        },
        // A double click or a retry after a timeout creates one payment, not two.
        { "idempotency-key": nuevaClave() },
      );
      onCreado(body.id_pago);
      setSerie((n) => n + 1);
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    } finally {
      setEnviando(false);
    }
  };
  return (
    <Panel title="Nuevo pago" testid="nuevo-pago">
      <form class="form" key={serie} onSubmit={enviar}>
        <label>Afiliado <input name="id_afiliado" required maxLength={255} defaultValue="AFILIADO_001" /></label>
        <label>Monto <input name="monto" type="number" required min="0.01" step="0.01" defaultValue="150" /></label>
        <label>
          Moneda
          <select name="moneda">
            <option>USD</option><option>EUR</option><option>COP</option>
          </select>
        </label>
        <label>Referencia <input name="referencia_pago" required maxLength={255} defaultValue={referencia} /></label>
        <button type="submit" disabled={enviando}>{enviando ? "Enviando…" : "Crear pago"}</button>
      </form>
      <Failure error={error} />
    </Panel>
  );
}

function PorMinuto({ datos }: { datos: Polled<PagosPorMinuto> }) {
  const { x, series } = useMemo(() => {
    const minutos = datos.data?.minutos ?? [];
    return {
      x: minutos.map((m) => Date.parse(m.minuto) / 1000),
      series: ESTADOS_PAGO.map((e) => ({ label: e, color: COLORES[e], values: minutos.map((m) => m.por_estado[e] ?? 0) })),
    };
  }, [datos.data]);
  return (
    <Panel
      title="Pagos por minuto (últimos 30), por estado actual"
      testid="pagos-por-minuto"
      actions={datos.data && <span data-testid="pagos-en-ventana">{datos.data.minutos.reduce((n, m) => n + m.total, 0)} pagos</span>}
    >
      <Failure error={datos.error} />
      <Chart title="" x={x} series={series} unit="pagos/min" />
    </Panel>
  );
}

function Traza({ id }: { id: string }) {
  const pago = usePoll(() => get<Pago>(`/pagos/${id}`), 1000, [id]);
  const traza = usePoll(() => get<EntradaTraza[]>(`/pagos/${id}/eventos`), 1000, [id]);
  const [error, setError] = useState<string>();
  const puedeRevertir = usePuede(PERMISOS.revertirPago);
  const p = pago.data?.id_pago === id ? pago.data : undefined;
  const revertir = async () => {
    setError(undefined);
    try {
      await call("PATCH", `/pagos/${id}/revertir`, { motivo: "Revertido desde la consola" });
      pago.refresh();
      traza.refresh();
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    }
  };
  return (
    <Panel
      title={`Pago ${corto(id)}`}
      testid="pago-elegido"
      actions={p?.estado === "EXITOSO" && puedeRevertir && <button onClick={revertir}>Revertir</button>}
    >
      <Failure error={pago.error ?? traza.error ?? error} />
      {p && (
        <dl class="details">
          <dt>Id</dt><dd><code>{p.id_pago}</code></dd>
          <dt>Estado</dt><dd data-testid="pago-estado" data-final={FINALES.includes(p.estado)}><Badge value={p.estado} /></dd>
          <dt>Monto</dt><dd>{monto(p.monto, p.moneda)}</dd>
          <dt>Afiliado</dt><dd>{p.id_afiliado}</dd>
          <dt>Referencia</dt><dd>{p.referencia_pago}</dd>
          <dt>Transacción</dt><dd>{p.referencia_transaccion ?? "—"}</dd>
          {p.mensaje_error && (<><dt>Error</dt><dd>{p.mensaje_error}</dd></>)}
        </dl>
      )}
      <h3>Traza</h3>
      <ol class="trace" data-testid="traza">
        {traza.data?.map((t) => (
          <li>
            <time>{fechaDe(t.fecha)}</time> <strong>{t.evento}</strong>
            {t.detalle != null && <code class="muted"> {typeof t.detalle === "string" ? t.detalle : JSON.stringify(t.detalle)}</code>}
          </li>
        ))}
      </ol>
    </Panel>
  );
}
