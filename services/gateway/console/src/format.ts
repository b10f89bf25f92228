const hora = new Intl.DateTimeFormat("es", { hour: "2-digit", minute: "2-digit", second: "2-digit" });
const fechaHora = new Intl.DateTimeFormat("es", { dateStyle: "short", timeStyle: "medium" });
const dinero = new Intl.NumberFormat("es", { maximumFractionDigits: 2 });

export const horaDe = (iso: string | null | undefined) => (iso ? hora.format(new Date(iso)) : "—");
export const fechaDe = (iso: string | null | undefined) => (iso ? fechaHora.format(new Date(iso)) : "—");
export const monto = (valor: number, moneda?: string) => `${dinero.format(valor)}${moneda ? ` ${moneda}` : ""}`;
export const corto = (id: string) => id.slice(0, 8);

export function duracion(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.floor(ms / 60_000)} min ${Math.round((ms % 60_000) / 1000)} s`;
}
