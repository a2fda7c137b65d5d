//! The one error type of the crate. Every public fallible call returns `Result<_, moco::Error>`.

/// Everything that can go wrong across the public API. Each variant says what was expected and what was given.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A size, length or hyperparameter does not fit the problem.
    #[error("invalid shape for {op}: expected {expected}, got {got}")]
    Shape {
        /// The operation that rejected its input.
        op: &'static str,
        /// What the operation needs.
        expected: String,
        /// What it was given.
        got: String,
    },
    /// A backend (CUDA driver, GPU adapter, NVRTC) cannot be used on this machine.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// A wgpu call failed (device lost, out of memory, validation).
    #[error("wgpu: {0}")]
    Wgpu(String),
    /// A CUDA driver call failed.
    #[error("cuda: {0}")]
    Cuda(String),
    /// NVRTC could not compile a kernel; the message holds the compiler log.
    #[error("nvrtc: {0}")]
    Compile(String),
    /// Reading or writing a file failed.
    #[error("io error on {path}: {source}")]
    Io {
        /// The file involved.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file exists but its contents are not what was expected (truncated, corrupt, wrong tensors).
    #[error("bad file {path}: {reason}")]
    BadFile {
        /// The file involved.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    /// Shorthand for [`Error::Shape`].
    pub fn shape(op: &'static str, expected: impl Into<String>, got: impl Into<String>) -> Self {
        Error::Shape { op, expected: expected.into(), got: got.into() }
    }
}

impl From<cudarc::driver::DriverError> for Error {
    fn from(e: cudarc::driver::DriverError) -> Self {
        Error::Cuda(format!("{e:?}"))
    }
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
