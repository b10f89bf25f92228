//! The collector's domain: tracking events and their normalisation, the affiliates'
//! configuration, source authentication (api keys, webhook signatures), the business rules
//! that discard an event, and rate limits. Pure: no I/O, no clock (time is passed in).

pub mod admision;
pub mod afiliados;
pub mod evento;
pub mod firma;
pub mod limite;

pub use admision::{Credenciales, Rechazo, Reglas, autenticar, exigir_credencial, motivo_descarte};
pub use afiliados::{ConfigInvalida, Directorio, Perfil, Secreto};
pub use evento::{
    CamposEvento, ContenidoEvento, ContextoServidor, ErrorCampo, FuenteEvento, TipoEvento,
};
pub use firma::{Firma, FirmaMalformada, FirmaRechazada, UsoDeFirma};
pub use limite::{Cuota, Decision, Politica};
