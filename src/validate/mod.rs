//! Proves a converted package computes what the source model computes: reads inputs and
//! expected outputs (`.npz`), and measures drift per output ([`metrics`]). The CLI's
//! `validate` runs the package in `interp` and reports through this module.

pub mod metrics;
pub mod npz;
