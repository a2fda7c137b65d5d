//! Checkpoints as safetensors with torchvision-compatible names. Work in progress for the ResNet issue.
