"""CIFAR-10: finding and reading it (sources), subsets, and the input pipelines."""
