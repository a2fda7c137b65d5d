//! Layers with explicit forward and backward, and the models built from them (ResNet). Work in progress for the
//! ResNet issue.
