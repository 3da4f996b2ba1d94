//! Reading the engine's own Prometheus metrics (the registry handed to
//! `Engine::start`), the only window the engine offers on its reconciles.

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

/// The engine's reconcile counters at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct EngineCounters {
    /// Reconciles completed, whatever their outcome
    /// (`flotilla_reconciles_total`).
    pub reconciles: u64,
    /// Reconciles that failed (`flotilla_reconciles_total{outcome="error"}`).
    pub reconcile_errors: u64,
    /// Total time spent in reconciles, seconds
    /// (`flotilla_reconcile_seconds_sum`).
    pub reconcile_seconds: f64,
}

impl EngineCounters {
    pub fn read(registry: &Registry) -> Self {
        let mut text = String::new();
        encode(&mut text, registry).expect("encoding to a String cannot fail");
        let mut counters = EngineCounters::default();
        for line in text.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let value: f64 = match value.parse() {
                Ok(v) => v,
                Err(_) => continue,
            };
            if series.starts_with("flotilla_reconciles_total") {
                counters.reconciles += value as u64;
                if series.contains("outcome=\"error\"") {
                    counters.reconcile_errors += value as u64;
                }
            } else if series == "flotilla_reconcile_seconds_sum" {
                counters.reconcile_seconds = value;
            }
        }
        counters
    }
}
