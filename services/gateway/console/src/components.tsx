import type { ComponentChildren } from "preact";
import { useEffect, useRef } from "preact/hooks";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

export interface Serie {
  label: string;
  color: string;
  values: (number | null)[];
}

/** A time chart (uPlot: 50 kB, canvas, no dependencies). `x` is in Unix seconds. */
export function Chart({ title, x, series, height = 180, unit }: { title: string; x: number[]; series: Serie[]; height?: number; unit?: string }) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const shape = series.map((s) => s.label).join("|");
  useEffect(() => {
    if (!box.current) return;
    const options: uPlot.Options = {
      width: box.current.clientWidth || 600,
      height,
      series: [{}, ...series.map((s) => ({ label: s.label, stroke: s.color, width: 2, points: { show: false } }))],
      axes: [{}, { label: unit, size: 60 }],
      scales: { y: { range: (_u, min, max) => [Math.min(0, min), Math.max(1, max)] } },
      legend: { live: false },
    };
    plot.current = new uPlot(options, [x, ...series.map((s) => s.values)], box.current);
    const resize = new ResizeObserver(() => plot.current?.setSize({ width: box.current?.clientWidth || 600, height }));
    resize.observe(box.current);
    return () => {
      resize.disconnect();
      plot.current?.destroy();
      plot.current = null;
    };
    // The chart is rebuilt only when its series change; new data goes through setData below.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [shape, height]);
  useEffect(() => {
    plot.current?.setData([x, ...series.map((s) => s.values)]);
  }, [x, series]);
  return (
    <figure class="chart">
      <figcaption>{title}</figcaption>
      <div ref={box} />
    </figure>
  );
}

export function Panel({ title, children, actions, testid }: { title: string; children: ComponentChildren; actions?: ComponentChildren; testid?: string }) {
  return (
    <section class="panel" data-testid={testid}>
      <header>
        <h2>{title}</h2>
        {actions}
      </header>
      {children}
    </section>
  );
}

export function Failure({ error }: { error?: string }) {
  return error ? (
    <p class="error" role="alert">
      {error}
    </p>
  ) : null;
}

export function Badge({ value }: { value: string }) {
  return <span class={`badge badge-${value.toLowerCase()}`}>{value}</span>;
}

export function Figure({ label, value, testid }: { label: string; value: ComponentChildren; testid?: string }) {
  return (
    <div class="figure" data-testid={testid}>
      <span class="value">{value}</span>
      <span class="label">{label}</span>
    </div>
  );
}

export const COLORES: Record<string, string> = {
  PENDIENTE: "#a0a0a0",
  PROCESANDO: "#3b82f6",
  EXITOSO: "#16a34a",
  FALLIDO: "#dc2626",
  REVERSADO: "#d97706",
};
