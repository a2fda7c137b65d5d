//! Datasets (CIFAR-10 binary, image folders, an embedded synthetic set), augmentations and the prefetching pair loader.
