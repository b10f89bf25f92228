import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import { SESION_PERDIDA, usarCsrf } from "./api";
import { cerrarSesion, type EstadoSesion, InicioSesion, leerSesion, Sesion } from "./sesion";
import "./style.css";
import { Campanas } from "./views/Campanas";
import { Colector } from "./views/Colector";
import { Pagos } from "./views/Pagos";
import { Reportes } from "./views/Reportes";
import { Salud } from "./views/Salud";

// One view per area, addressed by the URL's hash (#pagos…) so a view can be bookmarked and
// the gateway serves one file for all of them.
const VISTAS = {
  pagos: { titulo: "Pagos", vista: Pagos },
  campanas: { titulo: "Campañas", vista: Campanas },
  reportes: { titulo: "Reportes", vista: Reportes },
  colector: { titulo: "Colector", vista: Colector },
  salud: { titulo: "Salud", vista: Salud },
} as const;
type Nombre = keyof typeof VISTAS;

const desdeHash = (): Nombre => {
  const nombre = location.hash.slice(1);
  return nombre in VISTAS ? (nombre as Nombre) : "pagos";
};

/** The session first: no view (and no call for data) until the gateway says who is here. */
function App() {
  // undefined: still asking; null: signed out.
  const [sesion, setSesion] = useState<EstadoSesion | null>();
  const [error, setError] = useState<string>();
  useEffect(() => {
    leerSesion().then(setSesion, (e) => setError(String(e)));
    const perdida = () => leerSesion().then(setSesion, () => setSesion(null));
    window.addEventListener(SESION_PERDIDA, perdida);
    return () => window.removeEventListener(SESION_PERDIDA, perdida);
  }, []);
  usarCsrf(sesion?.csrf);
  if (error) return <p class="error" role="alert">{error}</p>;
  if (sesion === undefined) return <p class="muted">Cargando…</p>;
  if (sesion === null) return <InicioSesion onSesion={setSesion} />;
  const salir = async () => {
    await cerrarSesion().catch(() => undefined);
    setSesion(null);
  };
  return (
    <Sesion.Provider value={sesion}>
      <Consola sesion={sesion} salir={salir} />
    </Sesion.Provider>
  );
}

function Consola({ sesion, salir }: { sesion: EstadoSesion; salir: () => void }) {
  const [vista, setVista] = useState<Nombre>(desdeHash);
  useEffect(() => {
    const cambiar = () => setVista(desdeHash());
    window.addEventListener("hashchange", cambiar);
    return () => window.removeEventListener("hashchange", cambiar);
  }, []);
  const Vista = VISTAS[vista].vista;
  return (
    <>
      <header class="top">
        <h1>Aeropartners <span class="muted">consola de operaciones</span></h1>
        <nav>
          {(Object.keys(VISTAS) as Nombre[]).map((n) => (
            <a href={`#${n}`} class={n === vista ? "active" : ""} aria-current={n === vista ? "page" : undefined}>
              {VISTAS[n].titulo}
            </a>
          ))}
        </nav>
        <div class="who" data-testid="sesion">
          {sesion.usuario ? (
            <>
              <span data-testid="usuario">{sesion.usuario}</span>
              <button onClick={salir}>Cerrar sesión</button>
            </>
          ) : (
            <span title="AUTH_MODE=development: sin credenciales, solo en esta máquina">modo desarrollo</span>
          )}
        </div>
      </header>
      <main data-view={vista}>
        <Vista />
      </main>
    </>
  );
}

render(<App />, document.getElementById("app")!);
