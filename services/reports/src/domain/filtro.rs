//! The filter of `GET /api/reports/payments`: which payments a report counts.

use std::collections::HashMap;

use chrono::{DateTime, Days, NaiveDate, NaiveTime, Utc};

use super::reporte::{ESTADOS_PAGO, MONEDAS};

/// The query parameters the report accepts. Anything else is a typo worth a 400: a report
/// silently computed without the filter the client meant would be wrong, not merely broad.
pub const PARAMETROS: [&str; 5] = [
    "estado",
    "moneda",
    "id_afiliado",
    "fecha_desde",
    "fecha_hasta",
];

/// A validated filter. Dates are a half-open range on the payment's creation time, so a
/// `fecha_hasta` given as a day includes the whole of that day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Filtro {
    pub estado: Option<&'static str>,
    pub moneda: Option<&'static str>,
    pub id_afiliado: Option<String>,
    /// Inclusive.
    pub desde: Option<DateTime<Utc>>,
    /// Exclusive.
    pub hasta: Option<DateTime<Utc>>,
}

impl Filtro {
    /// Validates the query parameters; every problem is reported, one `(field, message)` each.
    pub fn from_query(params: &HashMap<String, String>) -> Result<Self, Vec<(String, String)>> {
        let mut errores = Vec::new();
        let mut desconocidos: Vec<&String> = params
            .keys()
            .filter(|k| !PARAMETROS.contains(&k.as_str()))
            .collect();
        desconocidos.sort();
        for nombre in desconocidos {
            errores.push((
                nombre.clone(),
                format!(
                    "parámetro desconocido; los filtros válidos son {}",
                    PARAMETROS.join(", ")
                ),
            ));
        }
        let mut filtro = Filtro::default();
        if let Some(raw) = params.get("estado") {
            match ESTADOS_PAGO.iter().find(|e| **e == raw) {
                Some(estado) => filtro.estado = Some(estado),
                None => errores.push((
                    "estado".into(),
                    format!("'{raw}' no es un estado; use {}", ESTADOS_PAGO.join(", ")),
                )),
            }
        }
        if let Some(raw) = params.get("moneda") {
            match MONEDAS.iter().find(|m| **m == raw) {
                Some(moneda) => filtro.moneda = Some(moneda),
                None => errores.push((
                    "moneda".into(),
                    format!("'{raw}' no es una moneda; use {}", MONEDAS.join(", ")),
                )),
            }
        }
        if let Some(raw) = params.get("id_afiliado") {
            if raw.is_empty() || raw.chars().count() > 255 {
                errores.push((
                    "id_afiliado".into(),
                    "debe tener entre 1 y 255 caracteres".into(),
                ));
            } else {
                filtro.id_afiliado = Some(raw.clone());
            }
        }
        match params.get("fecha_desde").map(|raw| instante(raw, false)) {
            Some(Ok(desde)) => filtro.desde = Some(desde),
            Some(Err(message)) => errores.push(("fecha_desde".into(), message)),
            None => {}
        }
        match params.get("fecha_hasta").map(|raw| instante(raw, true)) {
            Some(Ok(hasta)) => filtro.hasta = Some(hasta),
            Some(Err(message)) => errores.push(("fecha_hasta".into(), message)),
            None => {}
        }
        if let (Some(desde), Some(hasta)) = (filtro.desde, filtro.hasta)
            && desde >= hasta
        {
            errores.push((
                "fecha_hasta".into(),
                "debe ser posterior a fecha_desde".into(),
            ));
        }
        if errores.is_empty() {
            Ok(filtro)
        } else {
            Err(errores)
        }
    }
}

/// `2026-11-28` or an RFC 3339 time. As an upper bound a day means "up to the end of that
/// day" and a time means "up to and including it"; both become an exclusive bound.
fn instante(raw: &str, limite_superior: bool) -> Result<DateTime<Utc>, String> {
    if let Ok(dia) = NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        let dia = if limite_superior {
            dia.checked_add_days(Days::new(1))
                .ok_or_else(|| format!("'{raw}' está fuera de rango"))?
        } else {
            dia
        };
        return Ok(dia.and_time(NaiveTime::MIN).and_utc());
    }
    let instante = DateTime::parse_from_rfc3339(raw)
        .map_err(|_| {
            format!("'{raw}' no es una fecha (AAAA-MM-DD) ni un instante RFC 3339 con zona horaria")
        })?
        .with_timezone(&Utc);
    Ok(if limite_superior {
        instante + chrono::Duration::microseconds(1)
    } else {
        instante
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn campos(result: Result<Filtro, Vec<(String, String)>>) -> Vec<String> {
        result.unwrap_err().into_iter().map(|(f, _)| f).collect()
    }

    #[test]
    fn no_parameters_is_every_payment() {
        assert_eq!(Filtro::from_query(&query(&[])).unwrap(), Filtro::default());
    }

    #[test]
    fn every_filter_is_validated_and_kept() {
        let f = Filtro::from_query(&query(&[
            ("estado", "EXITOSO"),
            ("moneda", "COP"),
            ("id_afiliado", "af-1"),
            ("fecha_desde", "2026-11-01"),
            ("fecha_hasta", "2026-11-30"),
        ]))
        .unwrap();
        assert_eq!(f.estado, Some("EXITOSO"));
        assert_eq!(f.moneda, Some("COP"));
        assert_eq!(f.id_afiliado.as_deref(), Some("af-1"));
        assert_eq!(f.desde.unwrap().to_rfc3339(), "2026-11-01T00:00:00+00:00");
        assert_eq!(
            f.hasta.unwrap().to_rfc3339(),
            "2026-12-01T00:00:00+00:00",
            "a day as the upper bound includes the whole day"
        );
    }

    #[test]
    fn an_instant_upper_bound_is_inclusive() {
        let f = Filtro::from_query(&query(&[("fecha_hasta", "2026-11-28T06:22:56Z")])).unwrap();
        assert_eq!(
            f.hasta.unwrap().to_rfc3339(),
            "2026-11-28T06:22:56.000001+00:00"
        );
        let offset =
            Filtro::from_query(&query(&[("fecha_desde", "2026-11-28T01:00:00-05:00")])).unwrap();
        assert_eq!(
            offset.desde.unwrap().to_rfc3339(),
            "2026-11-28T06:00:00+00:00"
        );
    }

    #[test]
    fn bad_values_are_each_named() {
        assert_eq!(
            campos(Filtro::from_query(&query(&[
                ("estado", "exitoso"),
                ("moneda", "usd"),
                ("id_afiliado", ""),
                ("fecha_desde", "ayer"),
                ("fecha_hasta", "2026-13-01"),
            ]))),
            vec![
                "estado",
                "moneda",
                "id_afiliado",
                "fecha_desde",
                "fecha_hasta"
            ]
        );
        assert_eq!(
            campos(Filtro::from_query(&query(&[(
                "fecha_desde",
                "2026-11-28T06:22:56"
            )]))),
            vec!["fecha_desde"],
            "an instant without a time zone is ambiguous"
        );
    }

    #[test]
    fn an_empty_or_inverted_range_is_refused() {
        assert_eq!(
            campos(Filtro::from_query(&query(&[
                ("fecha_desde", "2026-11-30"),
                ("fecha_hasta", "2026-11-01"),
            ]))),
            vec!["fecha_hasta"]
        );
        // The same day on both sides is one whole day, not an empty range.
        assert!(
            Filtro::from_query(&query(&[
                ("fecha_desde", "2026-11-30"),
                ("fecha_hasta", "2026-11-30"),
            ]))
            .is_ok()
        );
    }

    #[test]
    fn unknown_parameters_are_refused() {
        assert_eq!(
            campos(Filtro::from_query(&query(&[
                ("fecha_dsde", "2026-11-30"),
                ("afiliado", "x")
            ]))),
            vec!["afiliado", "fecha_dsde"]
        );
    }

    #[test]
    fn an_oversized_affiliate_is_refused() {
        let long = "a".repeat(256);
        assert_eq!(
            campos(Filtro::from_query(&query(&[("id_afiliado", &long)]))),
            vec!["id_afiliado"]
        );
    }
}
