//! A per-scope GPU profile on CUDA (`--profile-steps`): an event recorded on the device's stream wherever the
//! scope changes, and each scope's time summed from the intervals between consecutive events when the profile
//! ends. Shared by a device's clones (the engine's networks name their layers through theirs).

use crate::device::ProfileRow;
use crate::error::Result;
use cudarc::driver::{sys::CUevent_flags, CudaEvent, CudaStream};
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Clone, Default)]
pub(crate) struct Profile(Arc<Mutex<Option<Marks>>>);

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Profile(running: {})", self.lock().is_some())
    }
}

/// The scopes in order of first use (name, milliseconds, intervals), and the events recorded so far with the scope
/// that starts at each.
struct Marks {
    rows: Vec<(String, f64, u64)>,
    events: Vec<(usize, CudaEvent)>,
}

/// An event with timing, recorded on `stream` now.
fn mark(stream: &CudaStream) -> Result<CudaEvent> {
    Ok(stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?)
}

impl Profile {
    fn lock(&self) -> MutexGuard<'_, Option<Marks>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn start(&self, stream: &CudaStream) -> Result<()> {
        let first = mark(stream)?;
        *self.lock() = Some(Marks { rows: vec![("(unscoped)".to_string(), 0.0, 0)], events: vec![(0, first)] });
        Ok(())
    }

    pub(crate) fn running(&self) -> bool {
        self.lock().is_some()
    }

    /// Starts scope `name` at the work queued from now on (an event on `stream` when the scope changes).
    pub(crate) fn enter(&self, stream: &CudaStream, name: &str) {
        let mut guard = self.lock();
        let Some(m) = guard.as_mut() else { return };
        let scope = match m.rows.iter().position(|r| r.0 == name) {
            Some(i) => i,
            None => {
                m.rows.push((name.to_string(), 0.0, 0));
                m.rows.len() - 1
            }
        };
        if m.events.last().is_some_and(|(s, _)| *s == scope) {
            return;
        }
        // an event that cannot be recorded leaves the time in the scope before (the profile is a diagnostic)
        if let Ok(e) = mark(stream) {
            m.events.push((scope, e));
        }
    }

    /// Ends the profile: a last event, then each interval's time added to the scope it started (waits for the
    /// stream).
    pub(crate) fn take(&self, stream: &CudaStream) -> Result<Vec<ProfileRow>> {
        let Some(mut m) = self.lock().take() else { return Ok(Vec::new()) };
        let last = mark(stream)?;
        m.events.push((0, last));
        for pair in m.events.windows(2) {
            let ((scope, start), (_, end)) = (&pair[0], &pair[1]);
            let row = &mut m.rows[*scope];
            row.1 += f64::from(start.elapsed_ms(end)?);
            row.2 += 1;
        }
        Ok(m.rows.into_iter().filter(|r| r.2 > 0).map(|(scope, gpu_ms, count)| ProfileRow { scope, gpu_ms, count }).collect())
    }
}
