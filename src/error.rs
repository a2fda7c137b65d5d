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
    /// A run's settings (a config struct, a front end's flags) do not fit together or are out of range; `setting`
    /// names the field and its flag.
    #[error("invalid settings: {setting}: expected {expected}, got {got}")]
    Settings {
        /// The setting(s) at fault, with the flag that sets them (`warmup_epochs (--warmup-epochs)`).
        setting: &'static str,
        /// What is allowed.
        expected: String,
        /// What was given.
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
    /// Training produced a non-finite loss; the run stopped before applying the step.
    #[error("non-finite loss {loss} at epoch {epoch}, step {step} (global step {global_step}); the last checkpoint is intact")]
    NonFinite {
        /// Epoch of the failing step.
        epoch: usize,
        /// Step within the epoch.
        step: usize,
        /// Steps since the start of training.
        global_step: u64,
        /// The loss value.
        loss: f32,
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
    /// Shorthand for [`Error::Settings`].
    pub fn settings(setting: &'static str, expected: impl Into<String>, got: impl Into<String>) -> Self {
        Error::Settings { setting, expected: expected.into(), got: got.into() }
    }
    /// [`Error::Io`] on the file `path`.
    #[cfg_attr(not(feature = "checkpoint"), allow(dead_code))]
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io { path: path.display().to_string(), source }
    }
    /// [`Error::BadFile`] for the file `path`.
    #[cfg_attr(not(feature = "checkpoint"), allow(dead_code))]
    pub(crate) fn bad_file(path: &std::path::Path, reason: impl Into<String>) -> Self {
        Error::BadFile { path: path.display().to_string(), reason: reason.into() }
    }
}

#[cfg(feature = "cuda")]
impl From<cudarc::driver::DriverError> for Error {
    fn from(e: cudarc::driver::DriverError) -> Self {
        Error::Cuda(format!("{e:?}"))
    }
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// `Ok` when a buffer holds `expected` elements, else [`Error::Shape`] naming it.
#[cfg_attr(not(all(feature = "wgpu", feature = "train")), allow(dead_code))]
pub(crate) fn check_len_eq(op: &'static str, what: &str, expected: usize, got: usize) -> Result<()> {
    if expected != got {
        return Err(Error::shape(op, format!("{what} of {expected} elements"), format!("{got} elements")));
    }
    Ok(())
}
