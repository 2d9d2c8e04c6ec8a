//! Monitors: online quality from joined labels ([`quality`]), feature and
//! prediction drift ([`psi`]), and the statistical comparison of a
//! candidate with the stable version ([`stats`]). Pure code; the loop
//! exports the numbers as Prometheus metrics ([`crate::metrics`]).

pub mod psi;
pub mod quality;
pub mod stats;
