import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
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

function App() {
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
      </header>
      <main data-view={vista}>
        <Vista />
      </main>
    </>
  );
}

render(<App />, document.getElementById("app")!);
