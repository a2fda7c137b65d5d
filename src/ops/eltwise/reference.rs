//! The f64 reference of the element-wise layers: plain loops, one thread, the textbook formulas. The tests compare the f32
//! kernels against it, and its backward against central finite differences of its forward. Inputs are f64 (so a
//! test can perturb them).

/// ReLU forward.
pub fn relu_forward(inp: &[f64]) -> Vec<f64> {
    inp.iter().map(|&x| if x < 0.0 { 0.0 } else { x }).collect()
}

/// ReLU backward: `dout · (out > 0)`.
pub fn relu_backward(dout: &[f64], out: &[f64]) -> Vec<f64> {
    dout.iter().zip(out).map(|(&d, &y)| if y > 0.0 { d } else { 0.0 }).collect()
}

/// Residual add forward `a + b` (its backward passes `dout` to both inputs).
pub fn add_forward(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

/// f64 exact GELU `0.5·x·(1 + erf(x/√2))` (`libm::erf`, correctly rounded to within 1 ulp).
pub fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2))
}

/// f64 GELU derivative `Φ(x) + x·φ(x)`.
pub fn gelu_grad(x: f64) -> f64 {
    0.5 * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2)) + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

/// f64 GELU forward over a tensor.
pub fn gelu_forward(inp: &[f64]) -> Vec<f64> {
    inp.iter().map(|&x| gelu(x)).collect()
}

/// f64 GELU backward: `dout·gelu'(inp)`.
pub fn gelu_backward(dout: &[f64], inp: &[f64]) -> Vec<f64> {
    dout.iter().zip(inp).map(|(&g, &x)| g * gelu_grad(x)).collect()
}
