//! What one MoCo step asks of the CUDA driver, counted on the emulated driver (tests/cuda_emu/driver counts every
//! entry point it is called through): allocations, frees, copies, memsets, synchronisations and launches of one
//! steady-state step (after a first step has allocated what it keeps), for the v2 engine (ResNet-18, shuffle-BN,
//! queue) and the v3 engine (ViT, symmetric loss). A GPU step that waits for the host, or allocates, cannot be
//! replayed as one graph and runs at the host's pace; this test prints the counts and holds what the step has
//! reached: no allocation or free, one read (the loss statistics) and one synchronisation. Counted on 2026-12-07
//! before the reused workspace and the device-side shuffle-BN: v2 1757 calls (286 launches, 89 allocations and
//! frees, 91 memsets, 3 reads and synchronisations), v3 1369 (323, 51, 57, 5). One test in its own binary: the
//! counts are per process.
mod common;
use common::training::{small_v2, small_v3, view_batches as batches};
use moco::train::{CudaEngine, CudaVitEngine, Engine};
use std::collections::BTreeMap;

/// The calls of the last step: counts after minus counts before.
fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after.iter().map(|(k, &n)| (k.clone(), n - before.get(k).copied().unwrap_or(0))).filter(|(_, n)| *n > 0).collect()
}

/// Sum of the counts of the entry points whose names start with one of `prefixes`.
fn sum(calls: &BTreeMap<String, u64>, prefixes: &[&str]) -> u64 {
    calls.iter().filter(|(k, _)| prefixes.iter().any(|p| k.starts_with(p))).map(|(_, n)| n).sum()
}

fn one_step_calls(name: &str, mut step: impl FnMut(usize) -> f32, driver: &common::cuda_emu::driver::Driver, captured: bool) -> BTreeMap<String, u64> {
    // eager: step 0 warms up, step 1 is counted; captured: step 1 is captured, step 2 (a replay) is counted
    let counted = if captured { 2 } else { 1 };
    for i in 0..counted {
        assert!(step(i).is_finite(), "{name}: step {i}");
    }
    let before = driver.call_counts();
    assert!(step(counted).is_finite(), "{name}: step {counted}");
    let calls = delta(&before, &driver.call_counts());
    let launches = sum(&calls, &["cuLaunchKernel"]);
    eprintln!("{name}: one steady-state step calls the driver {} times: {launches} launches, {} graph launches, {} allocations, {} frees, {} memsets, {} host-to-device copies, {} device-to-host copies, {} synchronisations",
        calls.values().sum::<u64>(), sum(&calls, &["cuGraphLaunch"]), sum(&calls, &["cuMemAlloc"]), sum(&calls, &["cuMemFree"]), sum(&calls, &["cuMemset"]), sum(&calls, &["cuMemcpyHtoD"]), sum(&calls, &["cuMemcpyDtoH"]), sum(&calls, &["cuStreamSynchronize", "cuCtxSynchronize", "cuEventSynchronize"]));
    for (k, n) in &calls {
        eprintln!("  {k:<32} {n}");
    }
    // the ops take their scratch from the device's reused workspace: a steady-state step allocates nothing
    assert_eq!((sum(&calls, &["cuMemAlloc"]), sum(&calls, &["cuMemFree"])), (0, 0), "{name}: allocations and frees in a steady-state step");
    // the keys are gathered back into batch order on the device and the features' finiteness is counted there:
    // the step's one read is the loss statistics with that count (before: 3 reads for v2, 5 for v3)
    let reads = (sum(&calls, &["cuMemcpyDtoH"]), sum(&calls, &["cuStreamSynchronize", "cuCtxSynchronize", "cuEventSynchronize"]));
    assert_eq!(reads, (1, 1), "{name}: (device-to-host copies, synchronisations) in a steady-state step");
    // a replayed step is one graph launch: no kernel is launched by itself
    let graphs = (sum(&calls, &["cuGraphLaunch"]), launches);
    assert_eq!(graphs, if captured { (1, 0) } else { (0, launches) }, "{name}: (graph launches, kernel launches)");
    calls
}

#[test]
fn one_steady_state_step_of_each_engine_counts_its_driver_calls() {
    let Some(mut cuda) = common::cuda_device("one_steady_state_step_of_each_engine_counts_its_driver_calls") else { return };
    // count what a user's step asks for: no test poisoning of the scratch
    cuda.set_scratch_poison(false);
    let Ok(Some(driver)) = common::cuda_driver() else {
        eprintln!("one_steady_state_step_of_each_engine_counts_its_driver_calls: skipped on a real driver (the counts come from the emulated one)");
        return;
    };
    for captured in [false, true] {
        let how = if captured { "captured as a graph, replayed" } else { "eager, --no-graph" };
        // (the v2 engine's replay, three emulated ResNet steps, is left to cuda_train's small v2 test: the capture
        // does not depend on the model)
        if !captured {
            let cfg = moco::train::TrainConfig { cuda_graph: false, ..small_v2() };
            let data = batches(&cfg, 2);
            let mut g = CudaEngine::new(&cuda, &cfg).unwrap();
            one_step_calls(&format!("MoCo v2 (ResNet-18), {how}"), |i| g.step(&data[i].0, &data[i].1, cfg.lr).unwrap().loss, driver, captured);
        }
        let cfg = moco::train::TrainConfig { cuda_graph: captured, ..small_v3() };
        let data = batches(&cfg, 3);
        let mut g = CudaVitEngine::new(&cuda, &cfg).unwrap();
        one_step_calls(&format!("MoCo v3 (ViT), {how}"), |i| g.step(&data[i].0, &data[i].1, cfg.lr).unwrap().loss, driver, captured);
    }
}
