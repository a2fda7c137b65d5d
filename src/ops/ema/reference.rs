//! The f64 reference of the EMA update.

/// EMA in f64: `m*k + (1-m)*q`.
pub fn ema(k: &[f32], q: &[f32], m: f64) -> Vec<f64> {
    k.iter().zip(q).map(|(&kv, &qv)| m * kv as f64 + (1.0 - m) * qv as f64).collect()
}

