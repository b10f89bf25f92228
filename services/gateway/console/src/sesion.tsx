// The console's session (the gateway's /console/api/sesion): who is signed in and what the
// cluster lets them do. The page offers only the actions in `permisos`; the services refuse
// the others anyway, since each request carries the operator's own token.

import { createContext } from "preact";
import { useContext, useState } from "preact/hooks";
import { ApiError, call } from "./api";
import { Failure, Panel } from "./components";

export interface EstadoSesion {
  /** `enforce`, or `development` (a developer's machine: nobody signs in). */
  modo: "enforce" | "development";
  usuario?: string;
  expira?: string;
  csrf?: string;
  /** The operator actions RBAC grants, as `kubectl auth can-i` spells them. */
  permisos: string[];
}

/** The actions the page offers, with the RBAC rule each needs (docs/security.md). */
export const PERMISOS = {
  revertirPago: "create payments/revert",
  cambiarVersion: "patch reportversions",
  reintentarEvento: "create events/retry",
} as const;

export const Sesion = createContext<EstadoSesion | null>(null);

/** Whether the signed-in user may do `permiso`. */
export function usePuede(permiso: string): boolean {
  return useContext(Sesion)?.permisos.includes(permiso) ?? false;
}

export function useModo(): EstadoSesion["modo"] | undefined {
  return useContext(Sesion)?.modo;
}

/** The current session, or null when there is none (401). */
export async function leerSesion(): Promise<EstadoSesion | null> {
  try {
    return (await call<EstadoSesion>("GET", "/console/api/sesion")).body;
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return null;
    throw error;
  }
}

export async function cerrarSesion(): Promise<void> {
  await call("DELETE", "/console/api/sesion");
}

/** The sign-in page: a token the cluster vouches for, as the Kubernetes Dashboard asks. */
export function InicioSesion({ onSesion }: { onSesion: (sesion: EstadoSesion) => void }) {
  const [error, setError] = useState<string>();
  const [enviando, setEnviando] = useState(false);
  const enviar = async (e: Event) => {
    e.preventDefault();
    const form = new FormData(e.currentTarget as HTMLFormElement);
    setEnviando(true);
    setError(undefined);
    try {
      const { body } = await call<EstadoSesion>("POST", "/console/api/sesion", { token: form.get("token") });
      onSesion(body);
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    } finally {
      setEnviando(false);
    }
  };
  return (
    <main class="signin" data-view="inicio-sesion">
      <Panel title="Iniciar sesión" testid="inicio-sesion">
        <p>
          Pegue un token de Kubernetes de su cuenta (<code>kubectl create token &lt;cuenta&gt;</code>, o el token OIDC
          que el clúster acepta). El clúster dice quién es y qué puede hacer: los Roles{" "}
          <code>aeropartners-viewer</code> y <code>aeropartners-operations</code> lo conceden.
        </p>
        <form class="form" onSubmit={enviar}>
          <label class="wide">
            Token
            <textarea name="token" required rows={5} autocomplete="off" spellcheck={false} />
          </label>
          <button type="submit" disabled={enviando}>{enviando ? "Comprobando…" : "Iniciar sesión"}</button>
        </form>
        <Failure error={error} />
      </Panel>
    </main>
  );
}
