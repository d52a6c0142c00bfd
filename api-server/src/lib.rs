//! The bundled user API.
