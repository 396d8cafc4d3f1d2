"""The core: the learned loss M_phi, the inner loop, the one policy-search stack, the
meta-train objectives, the meta-trainer, serialization and the run handle. Names no task."""
