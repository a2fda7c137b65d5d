//! CPU layer kernels (forward and backward) for the networks: conv2d, batch norm, pooling, linear, activations.
//! Work in progress for the ResNet issue.
