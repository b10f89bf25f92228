//! `payments_transitions_total{estado}`: what the dashboards' payments per minute by state
//! read. One test in this binary, so the process-wide counters are this test's alone.

mod common;

use common::*;
use payments::{
    application::{
        Creacion, CreadorDePagos, ProcesadorDePagos, SolicitudCreacion, registrar_metricas,
        revertir_pago,
    },
    domain::NuevoPago,
};
use platform::group_commit::BatchStore;
use rust_decimal::Decimal;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

fn solicitud(monto: &str, referencia: &str) -> SolicitudCreacion {
    SolicitudCreacion {
        solicitud: NuevoPago::validar(
            "afiliado-metricas",
            monto.parse::<Decimal>().map_err(|e| e.to_string()),
            "USD",
            referencia,
        )
        .expect("a valid request"),
        request_id: format!("req-{referencia}"),
    }
}

/// The counter's value for `estado`, as `/metrics` renders it.
fn transiciones(estado: &str) -> u64 {
    let line = format!("aeropartners_payments_transitions_total{{estado=\"{estado}\"}} ");
    platform::telemetry::render()
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .unwrap_or_else(|| panic!("no series for {estado} in /metrics"))
        .parse()
        .expect("a count")
}

#[sqlx::test(migrations = false)]
async fn each_committed_change_counts_once_in_its_state(o: PgPoolOptions, c: PgConnectOptions) {
    registrar_metricas();
    // Every state has a series from the start, so a rate exists before the first payment.
    for estado in ["PENDIENTE", "PROCESANDO", "EXITOSO", "FALLIDO", "REVERSADO"] {
        assert_eq!(transiciones(estado), 0, "{estado} starts at 0");
    }

    let pool = migrated_pool(o, c).await;
    let creador = CreadorDePagos::new(pool.clone());
    let respuestas = creador
        .store(&[
            solicitud("10", "met-a"),
            solicitud("10", "met-a"), // a replay: no new payment
            solicitud("20", "met-b"),
        ])
        .await
        .expect("the batch is stored");
    assert_eq!(transiciones("PENDIENTE"), 2, "two payments created");
    let Ok(Creacion::Creado(pago)) = &respuestas[0] else {
        panic!("created: {:?}", respuestas[0]);
    };

    let gateway = CountingGateway::new(Decision::Approve);
    let procesador = ProcesadorDePagos::new(pool.clone(), gateway);
    procesador.procesar(pago.id, "req-met-a").await.unwrap();
    // A redelivery of the same event changes nothing, and counts nothing.
    procesador.procesar(pago.id, "req-met-a").await.unwrap();
    assert_eq!(transiciones("PROCESANDO"), 1);
    assert_eq!(transiciones("EXITOSO"), 1);
    assert_eq!(transiciones("FALLIDO"), 0);

    revertir_pago(&pool, pago.id, "contracargo".into(), "tests", "req-rev")
        .await
        .unwrap();
    // Reverting again answers the same payment without a change.
    revertir_pago(&pool, pago.id, "contracargo".into(), "tests", "req-rev")
        .await
        .unwrap();
    assert_eq!(transiciones("REVERSADO"), 1);
    assert_eq!(transiciones("PENDIENTE"), 2, "nothing else was created");
}
