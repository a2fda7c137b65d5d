//! Evaluation of frozen features: the kNN monitor and the linear probe.
