//! A driver that refuses to capture the training step: the CUDA engine undoes what recording the step advanced on
//! the host, runs the step and every later one eagerly (as `--no-graph`), says why, and trains exactly as an engine
//! that never captured. The refusals are planted in the emulated driver, at the capture's beginning and at its end
//! (a capture recorded whole, then invalidated); a real driver runs the engine's capture tests instead
//! (`scripts/device_check.sh`). MoCo v3 on the small ViT (the v2 engine's step takes the same path, `run_step`, and
//! its ResNet runs ~30 s per emulated step). One test in its own binary: the planted refusals are per process.
mod common;
use common::training::{small_v3, view_batches as batches};
use moco::train::{CudaVitEngine, Engine, TrainConfig};

#[test]
fn a_refused_capture_runs_the_step_eagerly_with_the_same_results() {
    let test = "a_refused_capture_runs_the_step_eagerly_with_the_same_results";
    let Some(cuda) = common::cuda_device(test) else { return };
    let Ok(Some(driver)) = common::cuda_driver() else {
        eprintln!("{test}: skipped on a real driver: the refusals are planted in the emulated one");
        return;
    };
    let cfg = small_v3();
    let data = batches(&cfg, 3);
    let run = |engine: &mut CudaVitEngine| -> Vec<(u32, u32, u32)> {
        // (loss, acc@1, acc@5) as bits
        data.iter().map(|(xq, xk)| engine.step_with(xq, xk, cfg.lr, 0.99).map(|s| (s.loss.to_bits(), s.acc1.to_bits(), s.acc5.to_bits())).unwrap()).collect()
    };
    let graph_launches = || driver.call_counts().get("cuGraphLaunch").copied().unwrap_or(0);
    let mut eager = CudaVitEngine::new(&cuda, &TrainConfig { cuda_graph: false, ..cfg.clone() }).unwrap();
    let want = run(&mut eager);
    let want_state = eager.state().unwrap();
    assert!(eager.graph_refused().is_none(), "an engine that never captures was refused nothing");
    for (begin, end, how) in [(1, 0, "refused at cuStreamBeginCapture"), (0, 1, "invalidated at cuStreamEndCapture")] {
        let mut e = CudaVitEngine::new(&cuda, &cfg).unwrap();
        let launched = graph_launches();
        driver.refuse_captures(begin, end);
        let got = run(&mut e);
        driver.refuse_captures(0, 0);
        assert_eq!(got, want, "{how}: the steps' (loss bits, acc@1, acc@5) against the eager engine's");
        let state = e.state().unwrap();
        assert_eq!((state.opt_steps, state.q_tracked, state.k_tracked), (want_state.opt_steps, want_state.q_tracked, want_state.k_tracked), "{how}: the host's counters");
        assert!(state == want_state, "{how}: the parameters, statistics and optimiser states differ from the eager engine's");
        let reason = e.graph_refused().unwrap_or_else(|| panic!("{how}: the engine does not say the capture was refused"));
        assert!(reason.contains("STREAM_CAPTURE"), "{how}: the reason names the driver's error: {reason}");
        assert_eq!(graph_launches(), launched, "{how}: no graph was launched after the refusal (every later step eager)");
    }
    // the control: nothing planted, the same configuration captures and replays
    let mut e = CudaVitEngine::new(&cuda, &cfg).unwrap();
    let launched = graph_launches();
    assert_eq!(run(&mut e), want, "captured and replayed: the same steps");
    assert!(e.graph_refused().is_none() && graph_launches() >= launched + 2, "steps 2 and 3 are graph launches");
}
