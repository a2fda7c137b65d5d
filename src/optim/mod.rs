//! Optimisers over flat parameter buffers (SGD, LARS, AdamW) and learning-rate / momentum schedules. Work in
//! progress for the ResNet issue.
