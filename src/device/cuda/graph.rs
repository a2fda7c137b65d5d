//! Captured steps: a training step recorded once as a CUDA graph on the device's own stream and replayed, so that
//! a step costs one graph launch instead of some 300 kernel launches.
//!
//! A graph replays its launches with the parameters they were captured with. Three ops take values that change
//! every step (the EMA's momentum, the optimisers' learning rate and AdamW's bias corrections, the queue's
//! pointer); while a step is captured they read their parameter block from device memory instead (`live`, a slot
//! of this module's arena), and their kernels skip their writes when a count that the step wrote on the device
//! (its non-finite features) is not zero, as the host skips them after a non-finite loss. To replay, the host runs
//! only those ops, which then record their blocks into the same slots in the same order without launching; the
//! blocks are copied into the arena and the graph is launched ([`StepGraph`]).
//!
//! A captured step holds the addresses of everything it touched. The engine that captures owns its buffers; the
//! ops' reused scratch can grow when a larger op runs outside the step, which the device counts
//! ([`super::workspace::Growths`]): a replay after a growth refuses, and the engine captures again.

use crate::error::{Error, Result};
use cudarc::driver::{CudaGraph, CudaSlice, CudaStream, DevicePtr};
use std::sync::Arc;

/// Words of the arena: the slots of one step (an EMA block of 4, two optimisers of 16, two enqueues of 8) with room.
const ARENA_WORDS: usize = 256;
/// Slots start at 16-byte boundaries.
const SLOT_ALIGN_WORDS: usize = 4;

/// How a step-varying op runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Live {
    /// Not capturing: launch with the parameters by value.
    Eager,
    /// Capturing: launch, reading the parameters at `params` (device address) and skipping writes when the count
    /// at `skip` is not zero.
    Capture { params: u64, skip: u64 },
    /// Replaying: the block was recorded for the replay; launch nothing.
    Recorded,
}

impl Live {
    /// The `live` and `skip` kernel arguments (null when eager).
    pub(crate) fn args(self) -> (u64, u64) {
        match self {
            Live::Capture { params, skip } => (params, skip),
            _ => (0, 0),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Mode {
    #[default]
    Off,
    Capture,
    Replay,
}

/// The capture state of one [`super::Cuda`] made by `for_capture` (shared by its clones).
#[derive(Default)]
pub(crate) struct StepGraph {
    mode: Mode,
    /// The step's parameter blocks, in the order the ops took them (each at a slot boundary).
    words: Vec<u32>,
    /// Captured: each slot's words (before padding), in order.
    slots: Vec<usize>,
    /// Replay: slots recorded so far.
    taken: usize,
    /// The device copy of `words`, allocated before the first capture and kept (the graph holds its address).
    arena: Option<CudaSlice<u32>>,
    skip: u64,
    graph: Option<CudaGraph>,
    /// The device's scratch growths when the graph was captured.
    growths: u64,
}

impl std::fmt::Debug for StepGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepGraph").field("mode", &self.mode).field("slots", &self.slots).field("captured", &self.graph.is_some()).finish_non_exhaustive()
    }
}

impl StepGraph {
    /// What an op with parameter block `block` does now (see [`Live`]).
    pub(crate) fn live(&mut self, stream: &Arc<CudaStream>, block: &[u8]) -> Result<Live> {
        let len = block.len().div_ceil(4);
        let mut padded = vec![0u32; len];
        bytemuck::cast_slice_mut::<u32, u8>(&mut padded)[..block.len()].copy_from_slice(block);
        match self.mode {
            Mode::Off => Ok(Live::Eager),
            Mode::Capture => {
                let at = self.words.len();
                if at + len.next_multiple_of(SLOT_ALIGN_WORDS) > ARENA_WORDS {
                    return Err(Error::Cuda(format!("captured step: at most {ARENA_WORDS} words of per-step parameters, got {}", at + len)));
                }
                self.push(&padded);
                self.slots.push(len);
                let arena = self.arena.as_ref().ok_or_else(|| Error::Cuda("captured step: no parameter arena".into()))?;
                let (base, _sync) = arena.device_ptr(stream);
                Ok(Live::Capture { params: base + 4 * at as u64, skip: self.skip })
            }
            Mode::Replay => {
                let i = self.taken;
                match self.slots.get(i) {
                    Some(&captured) if captured == len => {}
                    other => return Err(Error::Cuda(format!("replayed step: per-step op {i} records a block of {len} words, the captured step {}", other.map_or("had no such op".to_string(), |w| format!("one of {w}"))))),
                }
                self.push(&padded);
                self.taken += 1;
                Ok(Live::Recorded)
            }
        }
    }

    fn push(&mut self, block: &[u32]) {
        self.words.extend_from_slice(block);
        self.words.resize(self.words.len().next_multiple_of(SLOT_ALIGN_WORDS), 0);
    }

    /// Starts capturing `stream`'s work; `skip` is the device address of the step's non-finite count.
    pub(crate) fn begin_capture(&mut self, stream: &Arc<CudaStream>, skip: u64, growths: u64) -> Result<()> {
        if self.mode != Mode::Off {
            return Err(Error::Cuda(format!("begin capture: the device is in {:?} mode", self.mode)));
        }
        if self.arena.is_none() {
            self.arena = Some(stream.alloc_zeros::<u32>(ARENA_WORDS)?);
        }
        self.graph = None;
        (self.words, self.slots, self.taken, self.skip, self.growths) = (Vec::new(), Vec::new(), 0, skip, growths);
        stream.begin_capture(cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        self.mode = Mode::Capture;
        Ok(())
    }

    /// Ends the capture. With `keep` (the step's host code succeeded) the graph is instantiated and launched once:
    /// the captured work has not run yet. Without, the capture is discarded. `growths`: the device's scratch growths
    /// now (none may have happened during the capture).
    pub(crate) fn end_capture(&mut self, stream: &Arc<CudaStream>, keep: bool, growths: u64) -> Result<()> {
        if self.mode != Mode::Capture {
            return Err(Error::Cuda(format!("end capture: the device is in {:?} mode", self.mode)));
        }
        self.mode = Mode::Off;
        let graph = stream.end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0))?;
        if !keep {
            return Ok(());
        }
        if growths != self.growths {
            return Err(Error::Cuda("captured step: the ops' scratch grew during the capture (an allocation cannot be captured)".into()));
        }
        self.graph = Some(graph.ok_or_else(|| Error::Cuda("captured step: the driver returned no graph".into()))?);
        self.launch(stream)
    }

    /// Starts the host side of a replay: `false` when there is no graph to replay (never captured, dropped, or
    /// captured before the ops' scratch grew), so the caller captures anew.
    pub(crate) fn begin_replay(&mut self, growths: u64) -> Result<bool> {
        if self.mode != Mode::Off {
            return Err(Error::Cuda(format!("begin replay: the device is in {:?} mode", self.mode)));
        }
        if self.graph.is_none() || growths != self.growths {
            self.graph = None;
            return Ok(false);
        }
        (self.words, self.taken) = (Vec::new(), 0);
        self.mode = Mode::Replay;
        Ok(true)
    }

    /// Ends the host side of a replay: every captured slot must have been recorded; then the blocks are copied to
    /// the arena and the graph launched (both queued on `stream`).
    pub(crate) fn end_replay(&mut self, stream: &Arc<CudaStream>, ok: bool) -> Result<()> {
        if self.mode != Mode::Replay {
            return Err(Error::Cuda(format!("end replay: the device is in {:?} mode", self.mode)));
        }
        self.mode = Mode::Off;
        if !ok {
            return Ok(());
        }
        if self.taken != self.slots.len() {
            return Err(Error::Cuda(format!("replayed step: {} per-step ops recorded, the captured step had {}", self.taken, self.slots.len())));
        }
        self.launch(stream)
    }

    fn launch(&mut self, stream: &Arc<CudaStream>) -> Result<()> {
        let (arena, graph) = match (self.arena.as_mut(), self.graph.as_ref()) {
            (Some(a), Some(g)) => (a, g),
            _ => return Err(Error::Cuda("captured step: no graph or arena to launch".into())),
        };
        if !self.words.is_empty() {
            // (ARENA_WORDS bounds `words` at capture; a replay records the same slots)
            let len = arena.len();
            let mut dst = arena.try_slice_mut(0..self.words.len()).ok_or_else(|| Error::Cuda(format!("captured step: {} words of per-step parameters for an arena of {len}", self.words.len())))?;
            stream.memcpy_htod(&self.words, &mut dst)?;
        }
        graph.launch()?;
        Ok(())
    }

    /// Forgets the captured step (the engine's buffers changed).
    pub(crate) fn drop_graph(&mut self) {
        self.graph = None;
    }
}
