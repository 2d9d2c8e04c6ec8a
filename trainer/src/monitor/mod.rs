//! Monitors: online quality from joined labels ([`quality`]), feature and
//! prediction drift ([`psi`]), and the statistical comparison of a
//! candidate with the stable version ([`stats`]), and where in the window
//! the concept changed ([`change`]). Pure code; the loop
//! exports the numbers as Prometheus metrics ([`crate::metrics`]).

pub mod change;
pub mod psi;
pub mod quality;
pub mod stats;
