//! Tracked partner events count on the campaign they name: clicks, impressions and
//! conversions. Counters are facts aggregated from the collector's events, not commands on the
//! campaign: they never change its version (an `If-Match` editor is not disturbed by traffic)
//! and emit no event of their own (the tracking event is the event).

/// The counter a tracking event adds one to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contador {
    Impresiones,
    Clicks,
    Conversiones,
}

impl Contador {
    /// From the collector's `tipo_evento`; `PAGE_VIEW` and anything else count on nothing.
    pub fn de_tipo(tipo_evento: &str) -> Option<Self> {
        match tipo_evento {
            "IMPRESSION" => Some(Self::Impresiones),
            "CLICK" => Some(Self::Clicks),
            "CONVERSION" => Some(Self::Conversiones),
            _ => None,
        }
    }

    /// The column of `campanas` it lives in.
    pub fn columna(self) -> &'static str {
        match self {
            Self::Impresiones => "impresiones",
            Self::Clicks => "clicks",
            Self::Conversiones => "conversiones",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tracked_type_has_its_counter_and_page_views_none() {
        assert_eq!(Contador::de_tipo("CLICK"), Some(Contador::Clicks));
        assert_eq!(Contador::de_tipo("IMPRESSION"), Some(Contador::Impresiones));
        assert_eq!(
            Contador::de_tipo("CONVERSION"),
            Some(Contador::Conversiones)
        );
        assert_eq!(Contador::de_tipo("PAGE_VIEW"), None);
        assert_eq!(
            Contador::de_tipo("click"),
            None,
            "the collector normalises to upper case"
        );
    }
}
