//! The f64 reference of the row normalisation.

/// Rows of `x: [rows, C]` normalised in f64, and their norms `max(||x||, 1e-12)`.
pub fn normalize(x: &[f32], c: usize) -> (Vec<f64>, Vec<f64>) {
    let rows = x.len() / c;
    let mut out = vec![0.0; x.len()];
    let mut norms = vec![0.0; rows];
    for r in 0..rows {
        let nrm = x[r * c..(r + 1) * c].iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>().sqrt().max(1e-12);
        norms[r] = nrm;
        for ch in 0..c {
            out[r * c + ch] = x[r * c + ch] as f64 / nrm;
        }
    }
    (out, norms)
}
